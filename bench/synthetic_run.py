"""One writer of synthetic runs for the benchmarks (bench_export.py, bench_scale.py): no model, real run layout.

`write_run` writes prompts, candidates (and optionally a complete `scores` ranking, as a reward model would give)
through RunDir, `shard_prompts` prompts per candidates shard, so that writing a million candidates holds one
shard in memory, not the run. Texts are drawn from a fixed pool of sentences (fast at a million texts) and each
starts with its own id, so no two texts are equal; about 5% of candidates hit the token limit.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from prefdata.run.records import candidate_id, prompt_id
from prefdata.run.store import MESSAGES_DTYPE, RunDir

JUDGE_HASH = "j" * 16
SAMPLER_HASH = "s" * 16
SENTENCE_WORDS = 12


def _sentences(rng: random.Random, n: int = 2000) -> list[str]:
    vocab = [f"w{i}" for i in range(500)]
    return [" ".join(rng.choices(vocab, k=SENTENCE_WORDS)) + "." for _ in range(n)]


def _ranking_row(pid: str, ids: list[str], scores: list[float], n: int) -> dict[str, object]:
    order = sorted(range(n), key=lambda i: -scores[i])
    ranks: dict[int, int] = {}
    for pos, i in enumerate(order):
        prev = order[pos - 1] if pos else None
        ranks[i] = ranks[prev] if prev is not None and scores[prev] == scores[i] else pos + 1
    strict = scores[order[0]] > scores[order[-1]]
    return {"prompt_id": pid, "judge_hash": JUDGE_HASH, "strategy": "scores",
            "candidate_ids": [ids[i] for i in order], "ranks": [ranks[i] for i in order],
            "scores": [scores[i] for i in order], "best_id": ids[order[0]] if strict else None,
            "worst_id": ids[order[-1]] if strict else None, "complete": True, "n_candidates": n,
            "comparisons": 0, "ties": 0, "failures": 0, "inconsistent": 0, "consistency": None,
            "margin": scores[order[0]] - scores[order[-1]]}  # fmt: skip


def write_run(
    path: Path,
    n_prompts: int,
    n: int,
    *,
    words: tuple[int, int] = (5, 300),
    rankings: bool = True,
    seed: int = 0,
    shard_prompts: int = 10_000,
) -> RunDir:
    """A run of `n_prompts` x `n` candidates of `words` words (about 1.3 tokens a word), optionally ranked."""
    rng = random.Random(seed)
    pool = _sentences(rng)
    run = RunDir(path)
    run.record_stage("generate", SAMPLER_HASH, {"config": {"model": "synthetic", "n": n}, "model": "synthetic"})
    prows: list[dict[str, object]] = []
    for start in range(0, n_prompts, shard_prompts):
        crows: list[dict[str, object]] = []
        rrows: list[dict[str, object]] = []
        for p in range(start, min(n_prompts, start + shard_prompts)):
            msgs = [{"role": "user", "content": f"prompt {p}: " + pool[p % len(pool)]}]
            pid = prompt_id(msgs)
            prows.append({"prompt_id": pid, "messages": msgs, "source": "{}", "reference": None})
            ids, scores = [], []
            for i in range(n):
                k = rng.randint(*words)
                body = " ".join(rng.choices(pool, k=max(1, k // SENTENCE_WORDS)))
                cid = candidate_id(pid, SAMPLER_HASH, "sample", i)
                crows.append({"prompt_id": pid, "candidate_id": cid, "sampler_hash": SAMPLER_HASH, "kind": "sample",
                              "index": i, "text": f"[{p}.{i}] {body}",
                              "finish_reason": "length" if rng.random() < 0.05 else "stop",
                              "n_tokens": k, "model": "synthetic"})  # fmt: skip
                ids.append(cid)
                scores.append(round(rng.gauss(0, 1), 1))
            if rankings:
                rrows.append(_ranking_row(pid, ids, scores, n))
        run.write_shard(run.candidates_dir, pl.DataFrame(crows))
        if rankings:
            run.write_shard(run.rankings_dir(JUDGE_HASH), pl.DataFrame(rrows, schema_overrides={"consistency": pl.Float64}))
    schema = {"prompt_id": pl.String, "messages": MESSAGES_DTYPE, "source": pl.String, "reference": pl.String}
    run.write_prompts(pl.DataFrame(prows, schema=schema))
    if rankings:
        run.record_stage("rank", JUDGE_HASH, {"config": {"model": "synthetic-rm"}})
    return run
