"""Time `export_run` on a synthetic run (no models): how export scales with prompts x candidates.

    python bench/bench_export.py --prompts 20000 --n 8

Builds a run directory in a temp folder with RunDir (random texts, a complete round-robin-like ranking and
a few truncated completions), then times the export for each pair strategy. Prints one line per strategy.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import polars as pl

from prefdata.export import ExportConfig, export_run
from prefdata.records import candidate_id, prompt_id
from prefdata.store import MESSAGES_DTYPE, RunDir


def build(path: Path, n_prompts: int, n: int, seed: int = 0) -> RunDir:
    rng = random.Random(seed)
    run = RunDir(path)
    run.record_stage("generate", "s" * 16, {"config": {"model": "synthetic", "n": n}, "model": "synthetic"})
    words = [f"w{i}" for i in range(500)]
    prows, crows, rrows = [], [], []
    for p in range(n_prompts):
        msgs = [{"role": "user", "content": f"prompt {p}"}]
        pid = prompt_id(msgs)
        prows.append({"prompt_id": pid, "messages": msgs, "source": "{}", "reference": None})
        ids, scores = [], []
        for i in range(n):
            k = rng.randint(5, 300)
            cid = candidate_id(pid, "s" * 16, "sample", i)
            crows.append({"prompt_id": pid, "candidate_id": cid, "sampler_hash": "s" * 16, "kind": "sample", "index": i,
                          "text": " ".join(rng.choices(words, k=k)), "finish_reason": "length" if rng.random() < 0.05 else "stop",
                          "n_tokens": k, "model": "synthetic"})  # fmt: skip
            ids.append(cid)
            scores.append(round(rng.gauss(0, 1), 1))
        order = sorted(range(n), key=lambda i: -scores[i])
        ranks = {}
        for pos, i in enumerate(order):
            prev = order[pos - 1] if pos else None
            ranks[i] = ranks[prev] if prev is not None and scores[prev] == scores[i] else pos + 1
        best, worst = ids[order[0]], ids[order[-1]]
        strict = scores[order[0]] > scores[order[-1]]
        rrows.append({"prompt_id": pid, "judge_hash": "j" * 16, "strategy": "scores",
                      "candidate_ids": [ids[i] for i in order], "ranks": [ranks[i] for i in order],
                      "scores": [scores[i] for i in order], "best_id": best if strict else None,
                      "worst_id": worst if strict else None, "complete": True, "n_candidates": n,
                      "comparisons": 0, "ties": 0, "failures": 0, "inconsistent": 0, "consistency": None,
                      "margin": scores[order[0]] - scores[order[-1]]})  # fmt: skip
    schema = {"prompt_id": pl.String, "messages": MESSAGES_DTYPE, "source": pl.String, "reference": pl.String}
    run.write_prompts(pl.DataFrame(prows, schema=schema))
    run.write_shard(run.candidates_dir, pl.DataFrame(crows))
    run.write_shard(run.rankings_dir("j" * 16), pl.DataFrame(rrows, schema_overrides={"consistency": pl.Float64}))
    run.record_stage("rank", "j" * 16, {"config": {"model": "synthetic-rm"}})
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=20000)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--pairs", nargs="*", default=["best-worst", "best-vs-each", "all", "adjacent"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = build(Path(tmp) / "run", args.prompts, args.n)
        print(f"built run: {args.prompts} prompts x {args.n} candidates in {time.perf_counter() - t0:.1f} s")
        for pairs in args.pairs:
            t0 = time.perf_counter()
            s = export_run(run, ExportConfig(pairs=pairs, out=str(Path(tmp) / pairs)))
            dt = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in Path(s.out).rglob("*") if p.is_file())
            print(f"--pairs {pairs:13s} {s.n_rows:8d} rows  {dt:6.2f} s  {s.n_rows / dt:9.0f} rows/s  "
                  f"{size / 1e6:7.1f} MB  drops {s.drops}")  # fmt: skip


if __name__ == "__main__":
    main()
