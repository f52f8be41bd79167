"""Iterative vs round-robin: judge calls and wall time per prompt, and agreement under a noisy judge.

The judge is simulated (each candidate has a hidden quality; every call flips its verdict with probability
`noise`), so the numbers measure the ranking algorithms and the stage's own overhead (run directory, shards,
caching), not a model. Usage: python bench/bench_rank.py [--prompts 50] [--out bench/rank_results.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from prefdata.judges.verdict import PairRequest, Verdict
from prefdata.rank import RankConfig, rank_run, read_rankings
from prefdata.run.store import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import candidate_row, prompt_row, write_inputs  # noqa: E402


class NoisyJudge:
    def __init__(self, noise: float, seed: int) -> None:
        self.noise, self.rng = noise, random.Random(seed)

    def config(self) -> dict[str, object]:
        return {"kind": "simulated", "noise": self.noise}

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        out = []
        for r in requests:
            qa, qb = (float(c.text.split("q=")[1]) for c in (r.first, r.second))
            slot = "a" if qa > qb else "b"
            if self.rng.random() < self.noise:
                slot = "b" if slot == "a" else "a"
            out.append(Verdict.from_slot(r, slot))
        return out


def build(path: Path, n_prompts: int, n: int, seed: int) -> tuple[RunDir, dict[str, tuple[str, str]]]:
    rng = random.Random(seed)
    run = RunDir(path)
    run.record_stage("generate", "bench", {})
    prows, crows, truth = [], [], {}
    for i in range(n_prompts):
        prows.append(prompt_row(f"prompt {i}"))
        pid = prows[-1]["prompt_id"]
        qs = [rng.random() for _ in range(n)]
        rows = [candidate_row(pid, "s", k, f"candidate q={q}", n_tokens=3, model="sim") for k, q in enumerate(qs)]
        crows += rows
        ids = [r["candidate_id"] for r in rows]
        truth[pid] = (ids[qs.index(max(qs))], ids[qs.index(min(qs))])
    write_inputs(run, prows, crows)
    return run, truth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (4, 8, 16):
            for noise in (0.0, 0.1, 0.2):
                for policy in ("both", "random"):
                    run, truth = build(Path(tmp) / f"n{n}-{noise}-{policy}", args.prompts, n, seed=n)
                    out = {}
                    for strategy in ("iterative", "round-robin"):
                        t0 = time.perf_counter()
                        s = rank_run(run, RankConfig(strategy=strategy, position_bias=policy, progress=False),
                                     judge=NoisyJudge(noise, seed=1))
                        wall = time.perf_counter() - t0
                        df = read_rankings(run, s["judge_hash"])
                        out[strategy] = (s, wall, df)
                    it, rr = out["iterative"][2], out["round-robin"][2]
                    j = it.join(rr, on="prompt_id", suffix="_rr")
                    row = {"n": n, "noise": noise, "policy": policy, "prompts": args.prompts}
                    for name, (s, wall, df) in out.items():
                        key = "it" if name == "iterative" else "rr"
                        best_ok = sum(r["best_id"] == truth[r["prompt_id"]][0] for r in df.iter_rows(named=True))
                        worst_ok = sum(r["worst_id"] == truth[r["prompt_id"]][1] for r in df.iter_rows(named=True))
                        row[f"{key}_calls_per_prompt"] = s["comparisons_per_prompt"]
                        row[f"{key}_ms_per_prompt"] = 1000 * wall / args.prompts
                        row[f"{key}_best_true"] = best_ok / args.prompts
                        row[f"{key}_worst_true"] = worst_ok / args.prompts
                        row[f"{key}_no_pref"] = s["without_preference"] / args.prompts
                    row["agree_best"] = float((j["best_id"] == j["best_id_rr"]).fill_null(False).sum() / args.prompts)
                    row["agree_worst"] = float((j["worst_id"] == j["worst_id_rr"]).fill_null(False).sum() / args.prompts)
                    results.append(row)
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
