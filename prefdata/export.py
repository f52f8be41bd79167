"""Export a ranked run as a preference dataset folder: data files + a dataset card, exactly what goes to the Hub.

`export_run(run, cfg)` is the one entry point (the CLI and `iterate` call it). It joins rankings, candidates
and prompts by id (never by text or row position, and every join is checked), forms pairs with
`prefdata.pairs`, counts every dropped pair by reason, splits train/test by prompt_id, and writes the
folder atomically (a temp folder, then rename), so a failed export never leaves half a dataset behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median
from typing import Any

import polars as pl

from prefdata.card import build_card, plot_lengths
from prefdata.errors import PrefdataError
from prefdata.export_folder import check_out, clean_stale, swap_into_place, temp_folder, write_manifest
from prefdata.options import opt
from prefdata.pairs import (
    DROP_REASONS,
    NEEDS_FULL_ORDER,
    PAIR_STRATEGIES,
    RankedCandidate,
    direct_verdicts,
    pair_drop_reason,
    pair_margin,
    ranking_pairs,
)
from prefdata.records import MESSAGES
from prefdata.store import RunDir, check_writable, command_line

SHAPES = ("conversational", "string", "ranking", "kto")
FORMATS = ("parquet", "jsonl", "datasets")


@dataclass
class ExportConfig:
    """How to turn one judge's rankings into a dataset. Defaults give the safest pairs: best vs worst,
    no ties, no inconsistent pairs, no truncated completions."""

    judge_hash: str | None = opt(None, "Which rankings/<judge_hash>/ to export; none picks the only one (an error lists "
                                 "them if several).", flag=("--judge", "--judge-hash"))
    pairs: str = opt("best-worst", "best-worst (one pair per prompt) | best-vs-each | all (every ordered pair) | adjacent "
                     "(neighbours in the ranking); all but best-worst need a complete ranking (round-robin or scores).")
    shape: str = opt("conversational", "conversational (prompt/chosen/rejected as message lists) | string (plain strings; "
                     "single-turn prompts only) | ranking (one row per prompt with every candidate, rank and score) | kto "
                     "(unpaired prompt/completion/label rows taken from the kept pairs).")
    format: str = opt("parquet", "parquet (data/*.parquet) | jsonl (data/*.jsonl) | datasets (a `save_to_disk` folder).")
    out: str | None = opt(None, "Output folder; none: <run>/exports/<name>.")
    name: str | None = opt(None, "Export name under <run>/exports/; none: derived from the judge and strategy.")
    min_margin: float = opt(0.0, "Minimum score difference chosen - rejected; 0 disables it (pairs without scores are "
                            "then kept).")
    keep_truncated: bool = opt(False, "Keep completions that hit the token limit (finish_reason=length), and pairs whose "
                               "reward-model score came from an input cut to --rm-max-length.",
                               flag="--keep-truncated/--drop-truncated")
    keep_inconsistent: bool = opt(False, "Keep pairs whose direct comparisons did not all prefer the chosen candidate.",
                                  flag="--keep-inconsistent/--drop-inconsistent")
    test_size: float = opt(0.0, "Fraction of prompts (not rows) in a test split; 0 writes train only.")
    seed: int = opt(0, "Seed of the test split.")
    license: str = opt("other", "Dataset card licence; `other` because the right licence depends on the prompts and the "
                       "model: set it.")
    tags: list[str] = opt([], "Extra dataset card tag (repeatable).", flag=("--tag", "--tags"))
    pretty_name: str | None = opt(None, "Dataset card title.")
    length_bias_threshold: float = opt(0.6, "Warn when chosen is longer than rejected in more than this share of pairs.")
    max_rows_per_file: int = opt(200_000, "Rows per data file (keeps Hub files well under their size limits).")
    overwrite: bool = opt(False, "Replace an existing export folder (only one that prefdata wrote).")
    plot: bool = opt(True, "Write the chosen/rejected length plot (PNG) next to the card.")

    def __post_init__(self) -> None:
        _choice("--pairs", self.pairs, PAIR_STRATEGIES)
        _choice("--shape", self.shape, SHAPES)
        _choice("--format", self.format, FORMATS)
        if not 0.0 <= self.test_size < 1.0:
            raise PrefdataError(f"--test-size must be a fraction in [0, 1), got {self.test_size}")
        if self.min_margin < 0:
            raise PrefdataError(f"--min-margin must be >= 0, got {self.min_margin}")
        if self.max_rows_per_file < 1:
            raise PrefdataError(f"max_rows_per_file must be >= 1, got {self.max_rows_per_file}")


@dataclass
class ExportSummary:
    """What an export wrote and what it dropped (also recorded in run.json and the card)."""

    out: str
    judge_hash: str
    pairs: str
    shape: str
    format: str
    n_prompts: int
    n_ranked: int
    n_considered: int
    n_rows: int
    splits: dict[str, int]
    drops: dict[str, int]
    warnings: list[str]
    lengths: dict[str, Any]
    judge_stats: dict[str, Any]
    files: list[str]
    sampler_hashes: list[str] = field(default_factory=list)  # the samplers whose completions are in the rows

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        split = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        out = [
            f"exported {self.n_rows} rows ({split}) from {self.n_ranked}/{self.n_prompts} ranked prompts "
            f"[judge {self.judge_hash}, --pairs {self.pairs}, --shape {self.shape}, --format {self.format}]",
            f"  pairs considered: {self.n_considered}; dropped: {_drops_text(self.drops) or 'none'}",
            f"  written to {self.out}",
        ]
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def export_run(run: RunDir, cfg: ExportConfig) -> ExportSummary:
    """Write one judge's rankings of `run` as a dataset folder with its card; return what was written."""
    run.require()
    meta = run.read_meta()
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

    df = pl.DataFrame(rows, schema=_schema(cfg.shape), orient="row")
    splits = _split(df, cfg.test_size, cfg.seed)
    lengths = length_stats(kept_pairs)
    warnings = []
    share = lengths.get("chosen_longer_share")
    if share is not None and share > cfg.length_bias_threshold:
        warnings.append(
            f"chosen is longer than rejected in {share:.0%} of pairs ({lengths['measure']}): the judge may "
            "favour length; consider a length-controlled judge, --min-margin or length-normalised training"
        )
    if drops.get("judge_failed"):
        warnings.append(
            f"{drops['judge_failed']} prompts skipped: their rankings rest on failed judge calls; run the same "
            "`prefdata rank` command again to retry those calls, then export again"
        )
    if cfg.test_size > 0 and "test" not in splits:
        warnings.append("too few prompts for a test split (each prompt's side is fixed by its hash); everything is in train")

    name = cfg.name or (f"{judge_hash}-{cfg.pairs}" + ("" if cfg.shape == "conversational" else f"-{cfg.shape}"))
    out = Path(cfg.out) if cfg.out else run.exports_dir(name)
    check_writable(run.path, "--run")  # run.json records the export
    check_writable(out.parent, "--out")
    clean_stale(out.parent)
    check_out(out, cfg.overwrite)
    tmp = temp_folder(out)
    try:
        files = _write_data(tmp, splits, cfg)
        judge_stats = ranking_stats(rankings)
        judge_stats["truncated_inputs"] = len(cut_all)
        summary = ExportSummary(
            out=str(out),
            judge_hash=judge_hash,
            pairs=cfg.pairs,
            shape=cfg.shape,
            format=cfg.format,
            n_prompts=prompts.height,
            n_ranked=rankings.height,
            n_considered=n_considered,
            n_rows=df.height,
            splits={k: v.height for k, v in splits.items()},
            drops=dict(drops),
            warnings=warnings,
            lengths=lengths,
            judge_stats=judge_stats,
            files=[],
            sampler_hashes=_row_samplers(rows),
        )
        plot_name = None
        if cfg.plot and kept_pairs:
            plot_name = "lengths.png"
            plot_lengths(tmp / plot_name, lengths["chosen_values"], lengths["rejected_values"], lengths["measure"])
            files.append(plot_name)
        card = build_card(
            summary=summary,
            cfg=cfg,
            meta=meta,
            data_files=_data_file_patterns(cfg.format, list(splits)),
            command=command_line(),
            plot_name=plot_name,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files.append("README.md")
        summary.files = sorted(files)
        write_manifest(tmp, files)
        swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    record = dataclasses.asdict(summary)
    record["lengths"] = {k: v for k, v in lengths.items() if not k.endswith("_values")}
    run.record_stage("export", name, {"config": dataclasses.asdict(cfg), "summary": record})
    return summary


# -- inputs -----------------------------------------------------------------------------------------


def pick_judge(run: RunDir, judge_hash: str | None) -> str:
    """The rankings folder to export: the one asked for, or the only one there is."""
    found = run.judge_hashes()
    if judge_hash is not None:
        if judge_hash not in found:
            have = ", ".join(found) if found else "none"
            raise PrefdataError(f"{run.path} has no rankings for judge {judge_hash} (rankings present: {have})")
        return judge_hash
    if not found:
        raise PrefdataError(f"{run.path} has no rankings yet; run `prefdata rank --run {run.path}` first")
    if len(found) > 1:
        raise PrefdataError(f"{run.path} has rankings from several judges ({', '.join(found)}); pick one with --judge")
    return found[0]


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
            "rank with --strategy round-robin or scores, or export with --pairs best-worst"
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
    out = {}
    for cid, rank, score in zip(ids, ranks, scores, strict=True):
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
        from prefdata.rank import content_key

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


# -- rows -------------------------------------------------------------------------------------------


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
        "finish_reasons": [c.finish_reason for c in keep],
        "n_tokens": [c.n_tokens for c in keep],
        "kinds": [c.kind for c in keep],
        "sampler_hashes": [c.sampler_hash for c in keep],
        "judge_hash": rk.get("judge_hash"),
        "strategy": rk.get("strategy"),
        "complete": rk.get("complete"),
    }
    return row, drops


def _schema(shape: str) -> dict[str, pl.DataType]:
    if shape == "ranking":
        return {
            "prompt_id": pl.String(),
            "prompt": MESSAGES,
            "completions": pl.List(pl.String),
            "candidate_ids": pl.List(pl.String),
            "ranks": pl.List(pl.Int64),
            "scores": pl.List(pl.Float64),
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


# -- split and write --------------------------------------------------------------------------------


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


def _data_file_patterns(fmt: str, splits: list[str]) -> dict[str, str]:
    if fmt == "datasets":
        return {s: f"{s}/data-*.arrow" for s in splits}
    ext = "parquet" if fmt == "parquet" else "jsonl"
    return {s: f"data/{s}-*.{ext}" for s in splits}


def _write_data(folder: Path, splits: dict[str, pl.DataFrame], cfg: ExportConfig) -> list[str]:
    folder.mkdir(parents=True)
    if cfg.format == "datasets":
        import datasets

        dd = datasets.DatasetDict({s: datasets.Dataset(df.to_arrow()) for s, df in splits.items()})
        dd.save_to_disk(str(folder))
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    files = []
    (folder / "data").mkdir()
    for split, df in splits.items():
        n_files = max(1, -(-df.height // cfg.max_rows_per_file))
        for i in range(n_files):
            part = df.slice(i * cfg.max_rows_per_file, cfg.max_rows_per_file)
            rel = f"data/{split}-{i:05d}-of-{n_files:05d}.{'parquet' if cfg.format == 'parquet' else 'jsonl'}"
            if cfg.format == "parquet":
                part.write_parquet(folder / rel)
            else:
                part.write_ndjson(folder / rel)
            files.append(rel)
    return files


# -- statistics -------------------------------------------------------------------------------------


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


def ranking_stats(rankings: pl.DataFrame) -> dict[str, Any]:
    """Judge-side rates over every ranked prompt of this judge (not only the exported ones)."""

    def total(col: str) -> int | None:
        return int(rankings[col].fill_null(0).sum()) if col in rankings.columns else None

    comparisons = total("comparisons")
    out: dict[str, Any] = {
        "prompts": rankings.height,
        "comparisons": comparisons,
        "ties": total("ties"),
        "failures": total("failures"),
        "inconsistent": total("inconsistent"),
        "too_long": total("too_long"),
    }
    for k in ("ties", "failures", "inconsistent"):
        v = out[k]
        out[f"{k}_rate"] = (v / comparisons) if comparisons and v is not None else None
    if "consistency" in rankings.columns and rankings["consistency"].drop_nulls().len():
        out["consistency_mean"] = float(rankings["consistency"].drop_nulls().mean())  # type: ignore[arg-type]
    else:
        out["consistency_mean"] = None
    if "complete" in rankings.columns:
        out["complete_share"] = float(rankings["complete"].fill_null(False).mean())  # type: ignore[arg-type]
    if "strategy" in rankings.columns:
        out["strategies"] = dict(Counter(rankings["strategy"].fill_null("unknown").to_list()))
    if "best_id" in rankings.columns:
        out["no_preference"] = int(rankings["best_id"].is_null().sum())
    return out


# -- helpers ----------------------------------------------------------------------------------------


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PrefdataError(f"unknown {flag} {value!r}; choose one of {', '.join(allowed)}")


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
