"""Builders for small run directories, written through RunDir like generate and rank do (no models needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from prefdata.records import candidate_id, prompt_id
from prefdata.store import MESSAGES_DTYPE, RunDir

SAMPLER = "samplerhash00001"
JUDGE = "judgehash0000001"


def cand(text: str, rank: int | None, score: float | None = None, finish: str = "stop", n_tokens: int | None = None) -> dict:
    return {"text": text, "rank": rank, "score": score, "finish": finish, "n_tokens": n_tokens}


def make_run(
    path: Path,
    prompts: list[tuple[str | list[dict[str, str]], list[dict[str, Any]]]],
    *,
    judge: str = JUDGE,
    strategy: str = "round-robin",
    judgments: list[tuple[int, int, int, str]] | None = None,
    rank_config: dict[str, Any] | None = None,
    write_rankings: bool = True,
) -> RunDir:
    """A run whose prompt i has the given candidates, listed best first with their ranks and scores.

    judgments: (prompt index, candidate index a, candidate index b, verdict a|b|tie|fail) rows.
    Returns the RunDir; candidate ids are deterministic (see cid()).
    """
    run = RunDir(path)
    run.record_stage(
        "generate",
        SAMPLER,
        {"config": {"model": "tiny-model", "n": 4, "temperature": 0.8, "max_tokens": 64}, "model": "tiny-model"},
    )
    prows, crows, rrows = [], [], []
    for prompt, cands in prompts:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        pid = prompt_id(messages)
        prows.append({"prompt_id": pid, "messages": messages, "source": "{}", "reference": None})
        ids = [candidate_id(pid, SAMPLER, "sample", i) for i in range(len(cands))]
        for i, (c, cid_) in enumerate(zip(cands, ids, strict=True)):
            crows.append(
                {
                    "prompt_id": pid, "candidate_id": cid_, "sampler_hash": SAMPLER, "kind": "sample", "index": i,
                    "text": c["text"], "finish_reason": c["finish"],
                    "n_tokens": c["n_tokens"] if c["n_tokens"] is not None else len(c["text"].split()),
                    "model": "tiny-model",
                }
            )  # fmt: skip
        ranks = [c["rank"] for c in cands]
        known = [r for r in ranks if r is not None]
        strict = bool(known) and min(known) < max(known)
        complete = all(r is not None for r in ranks)
        scores = [c["score"] for c in cands]
        have = [s for s in scores if s is not None]
        rrows.append(
            {
                "prompt_id": pid, "judge_hash": judge, "strategy": strategy if complete else "iterative",
                "candidate_ids": ids, "ranks": ranks, "scores": scores,
                "best_id": ids[0] if strict else None, "worst_id": ids[-1] if strict else None,
                "complete": complete, "n_candidates": len(ids), "comparisons": 6, "ties": 1, "failures": 0,
                "inconsistent": 1, "consistency": 0.8, "margin": (max(have) - min(have)) if have else None,
            }
        )  # fmt: skip
    run.write_prompts(pl.DataFrame(prows, schema={"prompt_id": pl.String, "messages": MESSAGES_DTYPE,
                                                  "source": pl.String, "reference": pl.String}))  # fmt: skip
    run.write_shard(run.candidates_dir, pl.DataFrame(crows))
    if write_rankings:
        schema = {
            "prompt_id": pl.String, "judge_hash": pl.String, "strategy": pl.String,
            "candidate_ids": pl.List(pl.String), "ranks": pl.List(pl.Int64), "scores": pl.List(pl.Float64),
            "best_id": pl.String, "worst_id": pl.String, "complete": pl.Boolean, "n_candidates": pl.Int64,
            "comparisons": pl.Int64, "ties": pl.Int64, "failures": pl.Int64, "inconsistent": pl.Int64,
            "consistency": pl.Float64, "margin": pl.Float64,
        }  # fmt: skip
        run.write_shard(run.rankings_dir(judge), pl.DataFrame(rrows, schema=schema))
        run.record_stage(
            "rank",
            judge,
            {
                "config": rank_config or {"model": "judge-model", "position_bias": "both", "strategy": strategy},
                "template": "pairwise-v1",
                "template_sha256": "ab" * 32,
            },
        )
    if judgments:
        jrows = []
        for pi, a, b, verdict in judgments:
            ids = rrows[pi]["candidate_ids"]
            winner = {"a": ids[a], "b": ids[b]}.get(verdict)
            jrows.append(
                {
                    "prompt_id": rrows[pi]["prompt_id"], "a_id": ids[a], "b_id": ids[b], "order": "ab",
                    "verdict": verdict, "winner_id": winner, "score": None, "raw": "...", "error": None,
                    "latency_s": 0.1,
                }
            )  # fmt: skip
        run.write_shard(run.judgments_dir(judge), pl.DataFrame(jrows, schema_overrides={"score": pl.Float64, "error": pl.String}))
    return run


def four(prefix: str = "") -> list[dict[str, Any]]:
    """Four distinct candidates ranked 1..4 with scores 4..1 (the best is also the longest)."""
    return [
        cand(f"{prefix}best answer with many words here", 1, 4.0),
        cand(f"{prefix}good answer with words", 2, 3.0),
        cand(f"{prefix}ok answer", 3, 2.0),
        cand(f"{prefix}bad", 4, 1.0),
    ]
