"""Time `export_run` on a synthetic run (no models): how export scales with prompts x candidates.

    python bench/bench_export.py --prompts 20000 --n 8

Builds a run directory in a temp folder with bench/synthetic_run.py (random texts, a complete scores ranking
with ties and a few truncated completions), then times the export for each pair strategy. Prints one line per strategy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from synthetic_run import write_run  # bench/ is on the path when this script runs

from prefdata.export import ExportConfig, export_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=20000)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--pairs", nargs="*", default=["best-worst", "best-vs-each", "all", "adjacent"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = write_run(Path(tmp) / "run", args.prompts, args.n)
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
