"""The rank run: build the judge, hash it, reuse the answered judgments, drive the groups, write the rankings."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import polars as pl

from prefdata.console import captured, say
from prefdata.errors import PrefdataError
from prefdata.judges.build import build_judge
from prefdata.judges.verdict import (
    PairJudge,
    PointwiseJudge,
)
from prefdata.rank.config import RankConfig, judge_identity
from prefdata.rank.output import RankingRows, RankSummary, summarize
from prefdata.rank.pairwise import run_pairwise
from prefdata.rank.scores import run_scores
from prefdata.run.groups import Groups
from prefdata.run.records import stable_hash
from prefdata.run.store import RunDir


@captured("rank")
def rank_run(run: RunDir, cfg: RankConfig, llm: Any = None, *, judge: PairJudge | PointwiseJudge | None = None) -> RankSummary:
    """Rank every prompt of `run`; returns the summary whose record is also written to run.json.

    `llm`: an existing in-process `vllm.LLM` to judge with. `judge`: a ready judge object (tests, the iterate
    loop); when given, the config's judge fields only label the run.
    """
    run.require()
    with run.stage_lock("rank"):
        return _rank_run(run, cfg, llm, judge)


def _rank_run(run: RunDir, cfg: RankConfig, llm: Any, judge: PairJudge | PointwiseJudge | None) -> RankSummary:
    groups = Groups(run, cfg.kinds, cfg.group_size, cfg.sampler)
    if judge is None and cfg.engine == "ray":  # the same driver, its judge calls spread over Ray actors
        from prefdata.distributed.score import ray_judge

        with ray_judge(cfg, groups.n_candidates, progress=cfg.progress) as rj:
            return _rank_groups(run, cfg, rj, groups)
    if judge is None:
        judge = build_judge(cfg, llm, n_items=groups.n_candidates)
    return _rank_groups(run, cfg, judge, groups)


def _rank_groups(run: RunDir, cfg: RankConfig, judge: PairJudge | PointwiseJudge, groups: Groups) -> RankSummary:
    pointwise = isinstance(judge, PointwiseJudge) and not isinstance(judge, PairJudge)
    strategy, chosen_by = cfg.resolve_strategy(pointwise)
    if pointwise != (strategy == "scores"):
        raise PrefdataError(
            "strategy scores needs a reward-model judge" if strategy == "scores"
            else f"a reward-model judge ranks by score; use --strategy scores, not {strategy}"
        )
    identity = judge_identity(cfg, judge, strategy, groups.sampler)  # one of several samplers: its own judge hash
    jh = stable_hash(identity)
    for line in earlier_rankings(run, identity, jh, strategy, chosen_by):
        say(line)
    t0 = time.monotonic()
    cols = (["prompt_id", "a_id", "verdict", "score", "n_tokens", "truncated", "created", "content_key"] if pointwise
            else ["prompt_id", "a_id", "b_id", "verdict", "winner_id", "created", "content_key"])
    old = run.read_judgments(jh, columns=cols)
    if old is not None:  # the rows a rerun may reuse: answered, with a content key (raw output is never read)
        old = old.filter((pl.col("verdict") != "fail") & pl.col("content_key").is_not_null())
    old_of = groups.split(old)
    del old  # only the split copy stays
    out = RankingRows(run, jh, strategy)
    run.drop_ranking_parts(jh)  # left by a run that was killed
    try:
        if pointwise:
            stats = run_scores(run, cfg, judge, jh, groups, old_of, out)  # type: ignore[arg-type]
        else:
            stats = run_pairwise(run, cfg, judge, jh, strategy, groups, old_of, out)  # type: ignore[arg-type]
        run.replace_rankings(jh, out.parts)
    finally:
        run.drop_ranking_parts(jh)
    elapsed = time.monotonic() - t0
    summary = summarize(out, stats, jh, strategy, elapsed)
    summary["prompts_without_candidates"] = groups.n_prompts_file - groups.n_prompts
    summary["dtype"] = judge_dtype(judge)  # an in-process judge's compute dtype (None: a server or a verifier)
    if getattr(judge, "needs_reference", False):
        summary["prompts_without_reference"] = groups.without_reference
    template = getattr(judge, "template", None)
    run.record_stage("rank", jh, {
        "judge_hash": jh,
        "config": dataclasses.asdict(cfg),
        "identity": identity,
        "strategy_chosen_by": chosen_by,
        "template": getattr(template, "name", None),
        "template_sha256": getattr(template, "sha256", None),
        "rm_backend": getattr(judge, "backend", None),  # which engine scored (auto picks by size)
        "samplers": groups.samplers,  # whose candidates were ranked (export picks rankings by it)
        "dtype": judge_dtype(judge),
        "counts": summary,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return RankSummary(summary, run=str(run.path))


def earlier_rankings(run: RunDir, identity: dict[str, Any], jh: str, strategy: str, chosen_by: str) -> list[str]:
    """One line per earlier rankings of this judge under another strategy (rank recorded them in run.json): they
    stay as they are in their own folder, so choosing a strategy (or its new default) never changes them."""
    same = {k: v for k, v in identity.items() if k != "strategy"}
    out, ranked = [], set(run.judge_hashes())
    for h, rec in (run.read_meta().get("stages", {}).get("rank", {}) or {}).items():
        old = (rec or {}).get("identity") if isinstance(rec, dict) else None
        if h == jh or not isinstance(old, dict) or old.get("strategy") == strategy or h not in ranked:
            continue
        if {k: v for k, v in old.items() if k != "strategy"} == same:
            out.append(f"rank: strategy {strategy} ({chosen_by}) under judge {jh}; this judge's {old.get('strategy')} "
                       f"rankings stay in rankings/{h}/ (export them with --judge {h})")
    return out


def judge_dtype(judge: Any) -> str | None:
    """The dtype an in-process judge computes in (None for a server or a verifier)."""
    from prefdata.llm.vllm_engine import engine_dtype

    for obj in (judge, getattr(judge, "backend", None)):
        dtype = getattr(obj, "dtype", None) or engine_dtype(getattr(obj, "llm", None))
        if isinstance(dtype, str):
            return dtype
    torch_dtype = getattr(judge, "torch_dtype", None)
    return str(torch_dtype).removeprefix("torch.") if torch_dtype is not None else None


