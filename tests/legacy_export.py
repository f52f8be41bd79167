"""Today's export, frozen as a test oracle: the row building of `prefdata.export.export_run` as it was before
export streamed in groups of prompts (copied verbatim from prefdata/export/ at commit 73b7207).

`legacy_export(run, cfg)` returns what that code would write: the split frames (rows in file order), the drop
counts, the pairs considered, the length statistics and the sampler hashes, or the PrefdataError it would raise
before writing. tests/test_export_equivalence.py compares the streaming export with it row by row.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from statistics import mean, median
from typing import Any

import polars as pl

from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, pick_judge
from prefdata.run.records import MESSAGES
from prefdata.run.store import RunDir
from tests.pairs import (
    DROP_REASONS,
    NEEDS_FULL_ORDER,
    RankedCandidate,
    direct_verdicts,
    pair_drop_reason,
    pair_margin,
    ranking_pairs,
)


@dataclass
class LegacyExport:
    """What the pre-streaming export computed before it wrote the folder."""

    splits: dict[str, pl.DataFrame]
    drops: dict[str, int]
    n_considered: int
    n_rows: int
    lengths: dict[str, Any]
    sampler_hashes: list[str] = field(default_factory=list)


def legacy_export(run: RunDir, cfg: ExportConfig) -> LegacyExport:
    """The rows, splits and statistics the export of commit 73b7207 produced (raises its PrefdataErrors)."""
    run.require()
    judge_hash = pick_judge(run, cfg.judge_hash)
    rankings = run.read_rankings(judge_hash)
    if rankings is None or rankings.height == 0:
        raise PrefdataError(f"{run.rankings_dir(judge_hash)} has no finished shards; let `prefdata rank` finish first")
    prompts = run.read_prompts()
    candidates = run.read_candidates(unique=True)
    if candidates is None:
        raise PrefdataError(f"{run.path} has no candidates; run `prefdata generate --run {run.path}` first")

    _check_full_order(_final(rankings), cfg.pairs, cfg.shape, judge_hash)
    prompt_msgs = _prompt_messages(prompts, rankings)
    cands = _candidates_by_id(candidates, rankings)
    verdicts = {} if cfg.keep_inconsistent else _load_verdicts(run, judge_hash, prompts, cands)
    cut_all = truncated_inputs(run, judge_hash)
    cut_inputs = set() if cfg.keep_truncated else cut_all

    order = {pid: i for i, pid in enumerate(prompts["prompt_id"].to_list())}
    rows_in = sorted(rankings.iter_rows(named=True), key=lambda r: order[r["prompt_id"]])
    drops: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    kept_pairs: list[tuple[RankedCandidate, RankedCandidate]] = []
    n_considered = 0
    for rk in rows_in:
        pid = rk["prompt_id"]
        if (rk.get("failures") or 0) > 0:  # not final: a failed call decided part of it (rank retries it)
            drops["judge_failed"] += 1
            n_considered += cfg.shape != "ranking"
            continue
        ranked = _ranked_candidates(rk, cands, cut_inputs)
        if cfg.shape == "ranking":
            row, dropped = _ranking_row(rk, ranked, prompt_msgs[pid], cfg)
            drops.update(dropped)
            if row is not None:
                rows.append(row)
                ordered = sorted((c for c in ranked.values() if c.rank is not None), key=lambda c: c.rank or 0)
                kept_pairs.append((ordered[0], ordered[-1]))
            continue
        id_pairs, skipped = ranking_pairs(rk, cfg.pairs)
        drops.update(skipped)
        n_considered += len(id_pairs) + sum(skipped.values())
        prompt_pairs: list[tuple[RankedCandidate, RankedCandidate]] = []
        for cid, rid in id_pairs:
            c, r = ranked[cid], ranked[rid]
            reason = pair_drop_reason(
                c,
                r,
                verdicts=verdicts.get((pid, frozenset((cid, rid)))),
                min_margin=cfg.min_margin,
                keep_truncated=cfg.keep_truncated,
                keep_inconsistent=cfg.keep_inconsistent,
            )
            if reason:
                drops[reason] += 1
            else:
                prompt_pairs.append((c, r))
        if cfg.shape == "kto":
            kto_rows, ambiguous = _kto_rows(rk, prompt_msgs[pid], prompt_pairs)
            drops["ambiguous_label"] += ambiguous
            rows += kto_rows
            kept_pairs += prompt_pairs
        else:
            for c, r in prompt_pairs:
                rows.append(_pair_row(rk, prompt_msgs[pid], c, r, cfg))
            kept_pairs += prompt_pairs
    drops = Counter({k: v for k, v in drops.items() if v})

    if not rows:
        raise PrefdataError(
            f"nothing to export: every pair was filtered out ({_drops_text(drops) or 'no pairs'}); " + _relax_hint(drops)
        )
    if cfg.shape == "string":
        _check_single_turn(rows)

    stderr = "score_stderr" in rankings.columns
    schema = _schema(cfg.shape, stderr)
    df = pl.DataFrame([{k: r.get(k) for k in schema} for r in rows] if cfg.shape == "ranking" else rows,
                      schema=schema, orient="row")  # fmt: skip
    splits = _split(df, cfg.test_size, cfg.seed)
    lengths = length_stats(kept_pairs)
    return LegacyExport(
        splits=splits,
        drops=dict(drops),
        n_considered=n_considered,
        n_rows=df.height,
        lengths=lengths,
        sampler_hashes=_row_samplers(rows),
    )


# -- copied verbatim from prefdata/export/ (commit 73b7207) ------------------------------------


def _final(rankings: pl.DataFrame) -> pl.DataFrame:
    """Rankings that rest on no failed judge call (the others are skipped and counted as judge_failed)."""
    if "failures" not in rankings.columns:
        return rankings
    return rankings.filter(pl.col("failures").fill_null(0) == 0)



def _check_full_order(rankings: pl.DataFrame, pairs: str, shape: str, judge_hash: str) -> None:
    needs = pairs in NEEDS_FULL_ORDER or shape == "ranking"
    if not needs or "complete" not in rankings.columns:
        return
    partial = rankings.filter(~pl.col("complete").fill_null(False))
    if partial.height:
        what = "--shape ranking" if shape == "ranking" else f"--pairs {pairs}"
        strategies = sorted(set(partial["strategy"].drop_nulls().to_list())) if "strategy" in partial.columns else []
        via = f" ({'/'.join(strategies)})" if strategies else ""
        raise PrefdataError(
            f"{what} needs a full order but {partial.height} rankings of judge {judge_hash}{via} are incomplete; "
            f"rank with --pairs {'ranking' if shape == 'ranking' else pairs} (sort: a full order in about N·log₂N "
            "comparisons), --strategy round-robin or scores, or export with --pairs best-worst"
        )


def _prompt_messages(prompts: pl.DataFrame, rankings: pl.DataFrame) -> dict[str, list[dict[str, str]]]:
    msgs = {
        pid: [{"role": m["role"], "content": m["content"]} for m in (messages or [])]
        for pid, messages in zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list(), strict=True)
    }
    missing = [p for p in rankings["prompt_id"].to_list() if p not in msgs]
    if missing:
        raise PrefdataError(
            f"{len(missing)} ranked prompt(s) are not in prompts.parquet (e.g. {missing[0]}); "
            "the run directory is inconsistent, re-run `prefdata generate` on it"
        )
    return msgs


def _candidates_by_id(candidates: pl.DataFrame, rankings: pl.DataFrame) -> dict[str, dict[str, Any]]:
    cands = {r["candidate_id"]: r for r in candidates.iter_rows(named=True)}
    missing = {c for ids in rankings["candidate_ids"].to_list() for c in (ids or []) if c not in cands}
    if missing:
        raise PrefdataError(
            f"{len(missing)} ranked candidate id(s) are not in candidates/ (e.g. {sorted(missing)[0]}); "
            "the rankings do not belong to this run's candidates"
        )
    return cands


def _ranked_candidates(
    rk: dict[str, Any], cands: dict[str, dict[str, Any]], cut_inputs: set[tuple[str, str]] | None = None
) -> dict[str, RankedCandidate]:
    ids = list(rk.get("candidate_ids") or [])
    ranks = list(rk.get("ranks") or [None] * len(ids))
    scores = list(rk.get("scores") or [None] * len(ids))
    stderrs = list(rk.get("score_stderr") or [None] * len(ids))
    out = {}
    for cid, rank, score, se in zip(ids, ranks, scores, stderrs, strict=True):
        c = cands[cid]
        out[cid] = RankedCandidate(
            candidate_id=cid,
            text=c.get("text") or "",
            finish_reason=c.get("finish_reason"),
            n_tokens=c.get("n_tokens"),
            sampler_hash=c.get("sampler_hash"),
            kind=c.get("kind"),
            model=c.get("model"),
            rank=rank,
            score=score,
            stderr=se,
            input_truncated=(rk["prompt_id"], cid) in (cut_inputs or set()),
        )
    return out


def truncated_inputs(run: RunDir, judge_hash: str) -> set[tuple[str, str]]:
    """(prompt_id, candidate_id) of every completion a reward model scored from an input cut to its max length
    (pointwise judgments flagged `truncated`): the score did not see the whole prompt, so pairs resting on it
    are dropped unless --keep-truncated."""
    df = run.read_judgments(judge_hash, columns=["prompt_id", "a_id", "truncated"])
    if df is None:
        return set()
    df = df.filter(pl.col("truncated").cast(pl.Boolean).fill_null(False))
    return set(zip(df["prompt_id"].to_list(), df["a_id"].to_list(), strict=True))


def _load_verdicts(
    run: RunDir, judge_hash: str, prompts: pl.DataFrame, cands: dict[str, dict[str, Any]]
) -> dict[tuple[str, frozenset[str]], list[str | None]]:
    """Direct judge calls per candidate pair; only the few columns needed are read (raw output can be big).
    A call whose content key shows it judged other texts than the candidates have now is left out."""
    df = run.read_judgments(judge_hash, columns=["prompt_id", "a_id", "b_id", "verdict", "winner_id", "content_key"])
    if df is None:
        return {}
    rows = list(df.iter_rows(named=True))
    if df["content_key"].null_count() < df.height:
        from prefdata.run.records import content_key

        has_ref = "reference" in prompts.columns
        context = {
            r["prompt_id"]: (r["messages"] or [], r["reference"] if has_ref else None) for r in prompts.iter_rows(named=True)
        }

        def current(r: dict[str, Any]) -> bool:
            if r["content_key"] is None or r["prompt_id"] not in context:
                return True
            a, b = cands.get(r["a_id"]), cands.get(r["b_id"] or "")
            if a is None or b is None:
                return False
            msgs, ref = context[r["prompt_id"]]
            return r["content_key"] == content_key(judge_hash, msgs, ref, a.get("text") or "", b.get("text") or "")

        rows = [r for r in rows if not r.get("b_id") or current(r)]
    return direct_verdicts(rows)



def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _pair_row(rk: dict[str, Any], prompt: list[dict[str, str]], c: RankedCandidate, r: RankedCandidate, cfg: ExportConfig) -> dict[str, Any]:
    string = cfg.shape == "string"
    return {
        "prompt_id": rk["prompt_id"],
        "prompt": (prompt[0]["content"] if len(prompt) == 1 else None) if string else prompt,
        "chosen": c.text if string else _assistant(c.text),
        "rejected": r.text if string else _assistant(r.text),
        "chosen_id": c.candidate_id,
        "rejected_id": r.candidate_id,
        "chosen_score": c.score,
        "rejected_score": r.score,
        "margin": pair_margin(c, r),
        "chosen_rank": c.rank,
        "rejected_rank": r.rank,
        "judge_hash": rk.get("judge_hash"),
        "strategy": rk.get("strategy"),
        "pair_strategy": cfg.pairs,
        "sampler_hash": c.sampler_hash,
        "rejected_sampler_hash": r.sampler_hash,
        "chosen_model": c.model,
        "rejected_model": r.model,
        "chosen_kind": c.kind,
        "rejected_kind": r.kind,
        "chosen_tokens": c.n_tokens,
        "rejected_tokens": r.n_tokens,
        "chosen_finish_reason": c.finish_reason,
        "rejected_finish_reason": r.finish_reason,
        "_n_turns": len(prompt),
    }


def _row_samplers(rows: list[dict[str, Any]]) -> list[str]:
    """Every sampler hash behind the exported rows (pairs, KTO rows or ranking rows)."""
    found: set[str] = set()
    for r in rows:
        for key in ("sampler_hash", "rejected_sampler_hash"):
            if r.get(key):
                found.add(r[key])
        found.update(h for h in r.get("sampler_hashes") or [] if h)
    return sorted(found)


def _kto_rows(
    rk: dict[str, Any], prompt: list[dict[str, str]], pairs: list[tuple[RankedCandidate, RankedCandidate]]
) -> tuple[list[dict[str, Any]], int]:
    """Unpaired rows: a kept pair's chosen is desirable, its rejected undesirable; both at once is ambiguous."""
    label: dict[str, bool | None] = {}
    by_id: dict[str, RankedCandidate] = {}
    for c, r in pairs:
        for cand, good in ((c, True), (r, False)):
            by_id[cand.candidate_id] = cand
            prev = label.get(cand.candidate_id, good)
            label[cand.candidate_id] = good if prev == good else None
    rows = []
    for cid, good in label.items():
        if good is None:
            continue
        cand = by_id[cid]
        rows.append(
            {
                "prompt_id": rk["prompt_id"],
                "prompt": prompt,
                "completion": _assistant(cand.text),
                "label": good,
                "completion_id": cid,
                "score": cand.score,
                "rank": cand.rank,
                "judge_hash": rk.get("judge_hash"),
                "strategy": rk.get("strategy"),
                "sampler_hash": cand.sampler_hash,
                "model": cand.model,
                "kind": cand.kind,
                "n_tokens": cand.n_tokens,
                "finish_reason": cand.finish_reason,
            }
        )
    return rows, sum(1 for v in label.values() if v is None)


def _ranking_row(
    rk: dict[str, Any], ranked: dict[str, RankedCandidate], prompt: list[dict[str, str]], cfg: ExportConfig
) -> tuple[dict[str, Any] | None, Counter[str]]:
    drops: Counter[str] = Counter()
    keep = []
    for c in ranked.values():
        if c.finish_reason == "length" and not cfg.keep_truncated:
            drops["truncated"] += 1
        elif c.input_truncated and not cfg.keep_truncated:
            drops["judge_input_truncated"] += 1
        else:
            keep.append(c)
    keep.sort(key=lambda c: c.rank if c.rank is not None else 1 << 30)
    distinct = {c.text.strip() for c in keep}
    if len(keep) < 2 or len(distinct) < 2 or len({c.rank for c in keep}) < 2:
        drops["too_few_candidates"] += 1
        return None, drops
    row = {
        "prompt_id": rk["prompt_id"],
        "prompt": prompt,
        "completions": [c.text for c in keep],
        "candidate_ids": [c.candidate_id for c in keep],
        "ranks": [c.rank for c in keep],
        "scores": [c.score for c in keep],
        "score_stderrs": [c.stderr for c in keep],
        "finish_reasons": [c.finish_reason for c in keep],
        "n_tokens": [c.n_tokens for c in keep],
        "kinds": [c.kind for c in keep],
        "sampler_hashes": [c.sampler_hash for c in keep],
        "judge_hash": rk.get("judge_hash"),
        "strategy": rk.get("strategy"),
        "complete": rk.get("complete"),
    }
    return row, drops


def _schema(shape: str, stderr: bool = False) -> dict[str, pl.DataType]:
    if shape == "ranking":
        return {
            "prompt_id": pl.String(),
            "prompt": MESSAGES,
            "completions": pl.List(pl.String),
            "candidate_ids": pl.List(pl.String),
            "ranks": pl.List(pl.Int64),
            "scores": pl.List(pl.Float64),
            **({"score_stderrs": pl.List(pl.Float64)} if stderr else {}),
            "finish_reasons": pl.List(pl.String),
            "n_tokens": pl.List(pl.Int64),
            "kinds": pl.List(pl.String),
            "sampler_hashes": pl.List(pl.String),
            "judge_hash": pl.String(),
            "strategy": pl.String(),
            "complete": pl.Boolean(),
        }
    if shape == "kto":
        return {
            "prompt_id": pl.String(),
            "prompt": MESSAGES,
            "completion": MESSAGES,
            "label": pl.Boolean(),
            "completion_id": pl.String(),
            "score": pl.Float64(),
            "rank": pl.Int64(),
            "judge_hash": pl.String(),
            "strategy": pl.String(),
            "sampler_hash": pl.String(),
            "model": pl.String(),
            "kind": pl.String(),
            "n_tokens": pl.Int64(),
            "finish_reason": pl.String(),
        }
    text: pl.DataType = pl.String() if shape == "string" else MESSAGES
    schema: dict[str, pl.DataType] = {
        "prompt_id": pl.String(),
        "prompt": text,
        "chosen": text,
        "rejected": text,
        "chosen_id": pl.String(),
        "rejected_id": pl.String(),
        "chosen_score": pl.Float64(),
        "rejected_score": pl.Float64(),
        "margin": pl.Float64(),
        "chosen_rank": pl.Int64(),
        "rejected_rank": pl.Int64(),
        "judge_hash": pl.String(),
        "strategy": pl.String(),
        "pair_strategy": pl.String(),
        "sampler_hash": pl.String(),
        "rejected_sampler_hash": pl.String(),
        "chosen_model": pl.String(),
        "rejected_model": pl.String(),
        "chosen_kind": pl.String(),
        "rejected_kind": pl.String(),
        "chosen_tokens": pl.Int64(),
        "rejected_tokens": pl.Int64(),
        "chosen_finish_reason": pl.String(),
        "rejected_finish_reason": pl.String(),
        "_n_turns": pl.Int64(),
    }
    return schema


def _check_single_turn(rows: list[dict[str, Any]]) -> None:
    multi = sum(1 for r in rows if r["_n_turns"] != 1)
    if multi:
        raise PrefdataError(
            f"--shape string needs single-message prompts, but {multi} exported rows have a system message or "
            "several turns; use --shape conversational"
        )



def split_prompt_ids(prompt_ids: list[str], test_size: float, seed: int) -> set[str]:
    """The prompt ids of the test split: a prompt is in test when its seeded hash, read as a number in [0, 1),
    is below `test_size`. The rule looks at one prompt at a time, so a prompt's split never depends on the
    other prompts: adding prompts later moves none of the existing ones across, and test prompts never leak
    into training through a re-export. The test share is `test_size` on average, not exactly."""
    if test_size <= 0:
        return set()
    return {p for p in set(prompt_ids) if split_point(p, seed) < test_size}


def split_point(prompt_id: str, seed: int) -> float:
    """The prompt's fixed place in [0, 1) for the split (the first 64 bits of a seeded SHA-256)."""
    return int(hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()[:16], 16) / 2**64


def _split(df: pl.DataFrame, test_size: float, seed: int) -> dict[str, pl.DataFrame]:
    df = df.drop("_n_turns") if "_n_turns" in df.columns else df
    ids = df["prompt_id"].to_list()
    test_ids = split_prompt_ids(ids, test_size, seed)
    if not test_ids or test_ids == set(ids):  # no train split is no dataset: a tiny set stays in train
        return {"train": df}
    is_test = pl.col("prompt_id").is_in(sorted(test_ids))
    return {"train": df.filter(~is_test), "test": df.filter(is_test)}



def length_stats(pairs: list[tuple[RankedCandidate, RankedCandidate]]) -> dict[str, Any]:
    """Chosen vs rejected lengths, in tokens where every candidate has a count, else in characters."""
    if not pairs:
        return {"n_pairs": 0, "measure": "characters", "chosen_longer_share": None, "chosen_values": [], "rejected_values": []}
    tokens = all(c.n_tokens is not None and r.n_tokens is not None for c, r in pairs)
    measure = "tokens" if tokens else "characters"

    def size(c: RankedCandidate) -> int:
        return int(c.n_tokens) if tokens and c.n_tokens is not None else len(c.text)

    ch = [size(c) for c, _ in pairs]
    rj = [size(r) for _, r in pairs]
    longer = sum(1 for a, b in zip(ch, rj, strict=True) if a > b)
    shorter = sum(1 for a, b in zip(ch, rj, strict=True) if a < b)
    return {
        "n_pairs": len(pairs),
        "measure": measure,
        "chosen_mean": mean(ch),
        "chosen_median": median(ch),
        "rejected_mean": mean(rj),
        "rejected_median": median(rj),
        "chosen_longer_share": longer / len(pairs),
        "chosen_shorter_share": shorter / len(pairs),
        "chosen_values": ch,
        "rejected_values": rj,
    }



def _drops_text(drops: dict[str, int] | Counter[str]) -> str:
    order = list(DROP_REASONS)
    items = sorted(((k, v) for k, v in drops.items() if v), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    return ", ".join(f"{k} {v}" for k, v in items)



def _relax_hint(drops: Counter[str]) -> str:
    hints = {
        "truncated": "--keep-truncated",
        "judge_input_truncated": "--keep-truncated (or rank again with a larger --rm-max-length)",
        "inconsistent": "--keep-inconsistent",
        "below_margin": "a lower --min-margin",
        "margin_unknown": "--min-margin 0",
        "judge_failed": "a rerun of `prefdata rank` (it retries the failed judge calls)",
    }
    useful = [h for k, h in hints.items() if drops.get(k)]
    if useful:
        return "relax with " + " or ".join(useful)
    return "the judge found no strict preferences; check the rankings (ties, failures)"
