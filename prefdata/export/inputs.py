"""Reading a ranked run for export: the judge to export, the rankings in prompt order, and one group's rows."""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl

from prefdata.errors import PrefdataError
from prefdata.export.tables import (
    CAND_FIELDS,
    NEEDS_FULL_ORDER,
    GroupInput,
)
from prefdata.run.records import MESSAGES
from prefdata.run.store import RunDir
from prefdata.sampler_choice import ALL, choose_sampler, describe


def pick_judge(run: RunDir, judge_hash: str | None, sampler: str | None = None) -> str:
    """The rankings folder to export: the one asked for, the only one there is, or the only one of --sampler (as
    rank recorded it in run.json) where the run holds rankings of several samplers."""
    found = run.judge_hashes()
    if judge_hash is None and len(found) > 1 and sampler not in (None, ALL):
        ranked = run.read_meta().get("stages", {}).get("rank", {})
        alone = {h: (ranked.get(h) or {}).get("samplers") or [] for h in found}  # rankings of one sampler alone
        mine = [h for h in found if len(alone[h]) == 1 and alone[h][0].startswith(sampler)]
        found = mine if len(mine) == 1 else found
    if judge_hash is not None:
        if judge_hash not in found:
            have = ", ".join(found) if found else "none"
            raise PrefdataError(f"{run.path} has no rankings for judge {judge_hash} (rankings present: {have})")
        return judge_hash
    if not found:
        raise PrefdataError(f"{run.path} has no rankings yet; run `prefdata rank --run {run.path}` first")
    if len(found) > 1:
        raise PrefdataError(f"{run.path} has rankings from several judges ({', '.join(found)}); pick one with --judge "
                            "(or, where they rank different samplers, with --sampler HASH)")
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
            f"rank with --pairs {'ranking' if shape == 'ranking' else pairs} (sort: a full order in about N·log₂N "
            "comparisons), --strategy round-robin or scores, or export with --pairs best-worst"
        )


def truncated_inputs(run: RunDir, judge_hash: str) -> set[tuple[str, str]]:
    """(prompt_id, candidate_id) of every completion a reward model scored from an input cut to its max length
    (pointwise judgments flagged `truncated`): the score did not see the whole prompt, so pairs resting on it
    are dropped unless --keep-truncated."""
    df = run.read_judgments(judge_hash, columns=["prompt_id", "a_id", "truncated"])
    if df is None:
        return set()
    df = df.filter(pl.col("truncated").cast(pl.Boolean).fill_null(False))
    return set(zip(df["prompt_id"].to_list(), df["a_id"].to_list(), strict=True))


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


_RANKING_COLS: dict[str, pl.DataType] = {
    "judge_hash": pl.String(),
    "strategy": pl.String(),
    "candidate_ids": pl.List(pl.String),
    "ranks": pl.List(pl.Int64),
    "scores": pl.List(pl.Float64),
    "score_stderr": pl.List(pl.Float64),  # sort rankings only (null for the others)
    "best_id": pl.String(),
    "worst_id": pl.String(),
    "failures": pl.Int64(),
    "complete": pl.Boolean(),
}


def _normalized(rankings: pl.DataFrame) -> pl.DataFrame:
    """The ranking columns export reads, null where a shard had none (the rows' `.get` of before)."""
    cols = [pl.col("prompt_id")] + [
        (pl.col(c) if c in rankings.columns else pl.lit(None)).cast(t).alias(c) for c, t in _RANKING_COLS.items()
    ]
    df = rankings.select(cols)
    return df.with_columns(pl.col("candidate_ids").fill_null(pl.lit([], dtype=pl.List(pl.String))))


def _in_prompt_order(rankings: pl.DataFrame, prompts: pl.LazyFrame) -> pl.DataFrame:
    """Rankings sorted as prompts.parquet lists the prompts, with that place as `_order`."""
    order = (
        prompts.select("prompt_id").with_row_index("_order").group_by("prompt_id").agg(pl.col("_order").max()).collect()
    )
    df = rankings.join(order, on="prompt_id", how="left", maintain_order="left")
    missing = df.filter(pl.col("_order").is_null())["prompt_id"].to_list()
    if missing:
        raise PrefdataError(
            f"{len(missing)} ranked prompt(s) are not in prompts.parquet (e.g. {missing[0]}); "
            "the run directory is inconsistent, re-run `prefdata generate` on it"
        )
    return df.with_columns(pl.col("_order").cast(pl.Int64)).sort("_order", maintain_order=True)


def _checked_candidates(run: RunDir) -> tuple[pl.LazyFrame, pl.DataFrame, bool]:
    """The candidates scan with the columns export reads (typed nulls where no shard has one); every candidate id
    with its shard, read once for the duplicate-text check and the ranked-id check; and whether some id is written
    more than once. The same id with two texts is the error of `RunDir.read_candidates` (found from the ids
    first, so the texts of ids written once are never read)."""
    scan = run.scan_candidate_shards(["candidate_id", *CAND_FIELDS])
    if scan is None:
        raise PrefdataError(f"{run.path} has no candidates; run `prefdata generate --run {run.path}` first")
    ids = scan.select("candidate_id", "_shard", "sampler_hash").collect()
    repeated = True
    if {"candidate_id", "text"} <= run.candidate_column_names():
        repeated = bool(ids["candidate_id"].is_duplicated().any())
        run.check_candidate_texts(ids)  # rank's check: only the texts of ids written twice are read
    return scan.select("candidate_id", *[pl.col(c).cast(t) for c, t in CAND_FIELDS.items()]), ids, repeated


def _check_samplers(run: RunDir, meta: dict[str, Any], rankings: pl.DataFrame, ids: pl.DataFrame, judge_hash: str,
                    wanted: str | None) -> None:  # fmt: skip
    """Refuse rankings that hold several samplers' candidates (ranked together, their pairs mix samplers) unless
    --sampler all, and rankings of another sampler than --sampler names. A one-sampler run checks one column."""
    present = ids["sampler_hash"].drop_nulls()
    if present.n_unique() > 1:  # only then: which of them these rankings hold
        ranked = rankings["candidate_ids"].explode().drop_nulls()
        present = ids.filter(pl.col("candidate_id").is_in(ranked.implode()))["sampler_hash"].drop_nulls()
    samplers = sorted(present.unique().to_list())
    if wanted == ALL:
        return
    if len(samplers) > 1:
        raise PrefdataError(
            f"the rankings of judge {judge_hash} rank the candidates of {len(samplers)} samplers together "
            f"({describe(meta, samplers)}), so its pairs would mix samplers; rank one sampler at a time "
            f"(`prefdata rank --run {run.path} --sampler HASH`) and export its rankings with --sampler HASH, or pass "
            f"--sampler {ALL} to export the mixed pairs"
        )
    if wanted is not None:
        choose_sampler(samplers, wanted, meta, f"the rankings of judge {judge_hash}", "export")


def _check_ranked_candidates(rankings: pl.DataFrame, have: pl.Series) -> None:
    ranked = rankings["candidate_ids"].explode().drop_nulls()
    missing = ranked.filter(~ranked.is_in(have.implode())).unique()
    if missing.len():
        raise PrefdataError(
            f"{missing.len()} ranked candidate id(s) are not in candidates/ (e.g. {missing.min()}); "
            "the rankings do not belong to this run's candidates"
        )


def _cut_inputs(run: RunDir, judge_hash: str) -> pl.DataFrame:
    """`truncated_inputs` as a frame (prompt_id, a_id), read lazily."""
    scan = run.scan_judgments(judge_hash)
    empty = pl.DataFrame(schema={"prompt_id": pl.String, "a_id": pl.String})
    if scan is None or "truncated" not in scan.collect_schema().names():
        return empty
    df = scan.filter(pl.col("truncated").cast(pl.Boolean).fill_null(False)).select("prompt_id", "a_id").unique()
    return df.collect().cast({"prompt_id": pl.String, "a_id": pl.String})


_VERDICT_COLS = ("prompt_id", "a_id", "b_id", "verdict", "winner_id", "content_key")


def _pairwise_judgments(run: RunDir, judge_hash: str) -> pl.LazyFrame | None:
    """The judgments scan when some call compared two candidates (a pointwise judge's run has none: then no group
    reads its judgments again)."""
    scan = run.scan_judgments(judge_hash)
    if scan is None or not {"prompt_id", "a_id", "b_id", "verdict"} <= set(scan.collect_schema().names()):
        return None
    return scan if scan.select(pl.col("b_id").is_not_null().any()).collect().item() else None


def _read_group(
    rankings: pl.DataFrame, prompts: pl.LazyFrame, cands: pl.LazyFrame, judgments: pl.LazyFrame | None, cut: pl.DataFrame,
    ends_only: bool = False, repeated: bool = True,
) -> GroupInput:
    """One group's prompts, candidates (one row per id, the first written; `repeated`: some id is written more
    than once in the run) and direct judge calls."""
    pids = rankings["prompt_id"]
    have = prompts.collect_schema().names()
    pr = prompts.filter(pl.col("prompt_id").is_in(pids.implode())).select(
        "prompt_id", "messages", pl.col("reference") if "reference" in have else pl.lit(None, dtype=pl.String).alias("reference")
    ).collect()
    pr = pr.unique("prompt_id", keep="last", maintain_order=True)
    if pr.schema["messages"] != MESSAGES:
        fields = pl.struct(pl.element().struct.field("role"), pl.element().struct.field("content"))
        pr = pr.with_columns(pl.col("messages").list.eval(fields).cast(MESSAGES))
    if ends_only:  # best-worst pairs read two texts per prompt, not every candidate's
        ids = pl.concat([rankings["best_id"], rankings["worst_id"]]).drop_nulls().unique()
    else:
        ids = rankings["candidate_ids"].explode().drop_nulls().unique()
    cd = cands.filter(pl.col("candidate_id").is_in(ids.implode())).collect()
    if repeated:
        cd = cd.unique("candidate_id", keep="first", maintain_order=True)
    verdicts = None
    if judgments is not None:
        jcols = judgments.collect_schema().names()
        if {"prompt_id", "a_id", "b_id", "verdict"} <= set(jcols):
            sel = [pl.col(c) if c in jcols else pl.lit(None, dtype=pl.String).alias(c) for c in _VERDICT_COLS]
            verdicts = (
                judgments.filter(pl.col("prompt_id").is_in(pids.implode()) & pl.col("b_id").is_not_null())
                .select(sel)
                .collect()
                .cast(dict.fromkeys(_VERDICT_COLS, pl.String))
            )
    return GroupInput(rankings, pr, cd, verdicts, cut.filter(pl.col("prompt_id").is_in(pids.implode())))
