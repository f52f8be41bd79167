"""`prefdata rank --strategy sort | round-robin | iterative` through the real CLI against a scripted judge server.

Why: bench_ranking.py measures the strategies through their generator protocol alone; this runs the whole path a
user runs (the `prefdata rank` and `prefdata export` commands in their own processes, the OpenAI client over HTTP,
the mt-bench-pair-v2 template and its verdict parsing, rounds across the prompts of a group, the judgments cache)
and scores what lands on disk (issue 23). The judge is tests.helpers.QualityServer on 127.0.0.1 in its own process,
the same model as bench_ranking.py's simulated judge: P(first shown wins) = σ((q₁ - q₂)/T + b), a tie band, and a
call's noise fixed by a hash of the request (common random numbers across strategies).

Per strategy: Kendall τ of the ranking to the true order, best-right / worst-right, judge calls per prompt, rounds,
and the pairs `prefdata export` writes per prompt and the share of them inverted (chosen truly worse), for
best-vs-each (complete rankings) and best-worst; for sort also best-vs-each with --min-margin 1 (a gap of at least
one standard error).

    .venv/bin/python bench/bench_rank_sort.py                 # N=16 at T=0.3 and 1.0, N=8 at T=0.3; 32 prompts each
    .venv/bin/python bench/bench_rank_sort.py --prompts 8 --sizes 16 --temps 0.3   # quick
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefdata.run.store import RunDir  # noqa: E402
from tests.helpers import QualityServer, make_candidates_run  # noqa: E402


def serve(conn: object, temp: float, bias: float, tie_band: float) -> None:
    """The judge server in its own process (in the bench's process it would share the GIL with nothing, but the
    CLI runs in another process anyway; a process of its own keeps its CPU apart from the bench's scoring)."""
    srv = QualityServer(temp=temp, bias=bias, tie_band=tie_band, seed=23)
    conn.send(srv.url)  # type: ignore[attr-defined]
    conn.recv()  # type: ignore[attr-defined]  # any message: stop
    srv.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "prefdata.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"prefdata {' '.join(args[:1])} exited {p.returncode}: {p.stderr[-2000:]}")
    return p


def quality_of(text: str) -> float:
    return float(re.findall(r"q=(-?\d+(?:\.\d+)?)", text)[0])


def kendall_tau(order: list[float]) -> float:
    """τ-a between the listed order (position 0 = best) and the true qualities listed."""
    x = np.array(order)
    n = len(x)
    s = sum(np.sign(x[i] - x[i + 1 :]).sum() for i in range(n - 1))
    return float(s) / (n * (n - 1) / 2)


def exported(run: RunDir, jh: str, pairs: str, out: Path, min_margin: float = 0.0) -> tuple[int, int]:
    """(pairs written, inverted ones) by `prefdata export`."""
    args = ["export", "--run", str(run.path), "--judge", jh, "--pairs", pairs, "--out", str(out), "--no-plot"]
    if min_margin:
        args += ["--min-margin", str(min_margin)]
    p = subprocess.run([sys.executable, "-m", "prefdata.cli", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)  # fmt: skip
    if p.returncode != 0:
        if "nothing to export" in p.stderr:
            return 0, 0
        raise RuntimeError(p.stderr[-2000:])
    df = pl.read_parquet(sorted((out / "data").glob("*.parquet")))
    chosen = [quality_of(m[0]["content"]) for m in df["chosen"].to_list()]
    rejected = [quality_of(m[0]["content"]) for m in df["rejected"].to_list()]
    return df.height, sum(c < r for c, r in zip(chosen, rejected, strict=True))


def one_setting(base: Path, n: int, prompts: int, temp: float, bias: float, tie_band: float, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, n, int(temp * 100), int(bias * 100)])
    texts = [[f"answer q={q:.4f} number {i}" for i, q in enumerate(rng.standard_normal(n))] for _ in range(prompts)]
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(child, temp, bias, tie_band), daemon=True)
    proc.start()
    url = parent.recv()
    rows = []
    try:
        for strategy in ("round-robin", "iterative", "sort"):
            run, _ = make_candidates_run(base / f"n{n}-t{temp}-b{bias}-{strategy}", texts)
            t0 = time.monotonic()
            cli("rank", "--run", str(run.path), "--judge", "mt-bench-pair-v2", "--base-url", url, "--strategy", strategy,
                "--max-retries", "0", "--no-progress")  # fmt: skip
            wall = time.monotonic() - t0
            jh = run.judge_hashes()[0]
            rk = run.read_rankings(jh)
            assert rk is not None
            cands = run.read_candidates().select("candidate_id", "text")
            q = dict(zip(cands["candidate_id"].to_list(), [quality_of(t) for t in cands["text"].to_list()], strict=True))
            taus, best, worst = [], 0, 0
            for r in rk.iter_rows(named=True):
                qs = [q[c] for c in r["candidate_ids"]]
                taus.append(kendall_tau(qs))
                best += r["best_id"] is not None and q[r["best_id"]] == max(qs)
                worst += r["worst_id"] is not None and q[r["worst_id"]] == min(qs)
            calls = rk["comparisons"].sum() / rk.height
            rounds = rk["rounds"].mean() if "rounds" in rk.columns else None
            bw, bw_inv = exported(run, jh, "best-worst", base / f"x-{n}-{temp}-{strategy}-bw")
            tau = "–" if strategy == "iterative" else f"{np.mean(taus):.3f} ± {np.std(taus) / math.sqrt(len(taus)):.3f}"
            cells = [f"{n}", f"{temp}", f"{bias}", strategy, tau, f"{best / rk.height:.2f}", f"{worst / rk.height:.2f}",
                     f"{calls:.1f}", "–" if rounds is None else f"{rounds:.1f}"]  # fmt: skip
            variants = [("", 0.0), (", --min-margin 1", 1.0)] if strategy == "sort" else [("", 0.0)]
            for label, m in variants:
                if strategy == "iterative":
                    bve = "–"
                else:
                    k, inv = exported(run, jh, "best-vs-each", base / f"x-{n}-{temp}-{strategy}-bve{m}", m)
                    bve = f"{k / prompts:.1f} / {inv / k if k else float('nan'):.4f}"
                name = strategy + label
                rows.append("| " + " | ".join([*cells[:3], name, *cells[4:], bve, f"{bw / prompts:.2f} / {bw_inv / bw if bw else float('nan'):.4f}",
                                              f"{wall:.1f}"]) + " |")  # fmt: skip
                print(rows[-1], flush=True)
    finally:
        parent.send("stop")
        proc.join(10)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--temps", type=float, nargs="+", default=[0.3, 1.0])
    ap.add_argument("--bias", type=float, default=0.5)
    ap.add_argument("--tie-band", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=23)
    args = ap.parse_args()
    print(f"{args.prompts} prompts per setting, q ~ N(0,1), tie band {args.tie_band}, both orders, judge mt-bench-pair-v2 "
          f"over HTTP; load average at start {os.getloadavg()[0]:.2f}")
    print()
    print("| N | T | b | strategy | Kendall τ (± se) | best right | worst right | calls/prompt | rounds/prompt | "
          "best-vs-each pairs/prompt / inverted | best-worst pairs/prompt / inverted | rank wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            for temp in args.temps if n == max(args.sizes) else args.temps[:1]:
                one_setting(Path(tmp), n, args.prompts, temp, args.bias, args.tie_band, args.seed)
    print()
    print(f"load average at end {os.getloadavg()[0]:.2f}; " + json.dumps({"python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
