"""prefdata's own cost at scale: wall time and peak RSS of rank and export on synthetic runs of 10K..1M candidates.

    nice -n 10 python bench/bench_scale.py --sizes 10000 100000 1000000 [--profile]

For each size (8 candidates per prompt, texts of 200..400 words, about 1.5 KB each) it writes a run
(bench/synthetic_run.py), ranks it with an instant in-process judge, by scores and pairwise (iterative), then
exports the scores ranking with every pair strategy. Each stage runs in its own subprocess, which reports its
wall time, CPU time (user + system, all threads: steadier than wall time on a shared machine) and its peak
RSS (getrusage of itself, so one stage's memory never hides another's); the parent
kills a stage whose RSS passes --rss-limit-gb and reports it as stopped. --profile adds the top functions
(cProfile, cumulative) of each stage. Prints one JSON line per stage and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ["write", "rank-scores", "rank-pairwise", "export:best-worst", "export:best-vs-each", "export:all",
          "export:adjacent"]


def _key(text: str) -> int:
    return len(text) * 7919 % 1000  # a deterministic "quality" that costs nothing to compute


class InstantScorer:
    """A pointwise judge that answers at once: only prefdata's own work is timed."""

    def config(self) -> dict[str, object]:
        return {"kind": "instant-scores"}

    def score(self, requests: list) -> list:
        from prefdata.judges.verdict import ScoreResult

        return [ScoreResult(r.candidate.id, _key(r.candidate.text) / 100, 1, False, None, 0.0) for r in requests]


class InstantPairJudge:
    """A pairwise judge that answers at once (the longer-keyed text wins)."""

    def config(self) -> dict[str, object]:
        return {"kind": "instant-pair"}

    def judge(self, requests: list) -> list:
        from prefdata.judges.verdict import Verdict

        return [Verdict.from_slot(r, "a" if _key(r.first.text) >= _key(r.second.text) else "b") for r in requests]


def run_stage(stage: str, run_path: Path, size: int, per_prompt: int, out: Path, rank_batch: int = 4096) -> dict[str, object]:
    """Runs in the child: one stage, measured."""
    from prefdata.run.store import RunDir

    t0 = time.perf_counter()
    info: dict[str, object] = {}
    if stage == "write":
        from synthetic_run import write_run

        write_run(run_path, size // per_prompt, per_prompt, words=(200, 400), rankings=False)
    elif stage.startswith("rank-"):
        from prefdata.rank import RankConfig, rank_run

        scores = stage == "rank-scores"
        cfg = RankConfig(judge="instant", strategy="scores" if scores else "iterative", position_bias="fixed",
                         batch_size=rank_batch, progress=False)
        s = rank_run(RunDir(run_path), cfg, judge=InstantScorer() if scores else InstantPairJudge())
        info = {"judge_hash": s["judge_hash"], "comparisons": s["comparisons"], "prompts": s["prompts"]}
    elif stage.startswith("export:"):
        from prefdata.export import ExportConfig, export_run

        pairs = stage.split(":", 1)[1]
        jh = json.loads((out / "judge_hash").read_text())
        s = export_run(RunDir(run_path), ExportConfig(judge_hash=jh, pairs=pairs, out=str(out / f"export-{pairs}"),
                                                      keep_truncated=True, overwrite=True, plot=False))
        info = {"rows": s.n_rows}
    wall = time.perf_counter() - t0
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"stage": stage, "size": size, "wall_s": round(wall, 2), "cpu_s": round(use.ru_utime + use.ru_stime, 2),
            "peak_rss_mb": round(use.ru_maxrss / 1024, 1), **info}


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def spawn(args: argparse.Namespace, stage: str, run_path: Path, size: int, out: Path) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", stage, "--run", str(run_path), "--size", str(size),
           "--per-prompt", str(args.per_prompt), "--out", str(out), "--rank-batch", str(args.rank_batch)]
    if args.profile:
        cmd.append("--profile")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    top = 0.0
    while proc.poll() is None:
        top = max(top, _rss_mb(proc.pid))
        if top > args.rss_limit_gb * 1024 or time.perf_counter() - t0 > args.stage_limit_s:
            proc.kill()
            proc.wait()
            why = "rss" if top > args.rss_limit_gb * 1024 else "time"
            return {"stage": stage, "size": size, "stopped": why, "wall_s": round(time.perf_counter() - t0, 1),
                    "peak_rss_mb": round(top, 1)}
        time.sleep(0.2)
    text = proc.stdout.read() if proc.stdout else ""
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"stage": stage, "size": size, "failed": proc.returncode, "output": text[-2000:]}
    res = json.loads(lines[-1])
    if "judge_hash" in res and stage == "rank-scores":
        (out / "judge_hash").write_text(json.dumps(res["judge_hash"]))
    return res


def table(rows: list[dict[str, object]]) -> str:
    out = ["| candidates | stage | wall s | CPU s | peak RSS MB | rows or comparisons | per unit (wall) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        size = int(r["size"])  # type: ignore[arg-type]
        wall = float(r["wall_s"])  # type: ignore[arg-type]
        note = ""
        count = r.get("rows", r.get("comparisons", ""))
        if "stopped" in r:
            note = f"stopped ({r['stopped']} limit)"
        elif "failed" in r:
            note = f"failed (exit {r['failed']})"
        elif str(r["stage"]).startswith("export:") and wall > 0:
            note = f"{int(r['rows']) / wall:,.0f} rows/s"  # type: ignore[call-overload]
        elif str(r["stage"]).startswith("rank-") and wall > 0:
            note = f"{1000 * wall / (size / 8):.2f} ms/prompt"
        out.append(f"| {size:,} | {r['stage']} | {wall:.1f} | {r.get('cpu_s', '')} | {r['peak_rss_mb']} | {count} | {note} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--stages", nargs="+", default=STAGES)
    ap.add_argument("--rss-limit-gb", type=float, default=8.0)
    ap.add_argument("--stage-limit-s", type=float, default=1800.0)
    ap.add_argument("--rank-batch", type=int, default=4096,
                    help="rank --batch-size: judge calls per round and per judgments shard (prefdata's default: 64)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep", default=None, help="Folder to keep the runs in (default: a temp folder, removed).")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            res = prof.runcall(run_stage, args.child, Path(args.run), args.size, args.per_prompt, Path(args.out),
                               args.rank_batch)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
            sys.stderr.write(f"== profile {args.child} {args.size}\n{buf.getvalue()}\n")
        else:
            res = run_stage(args.child, Path(args.run), args.size, args.per_prompt, Path(args.out), args.rank_batch)
        print(json.dumps(res), flush=True)
        return
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        for size in args.sizes:
            out = base / f"size-{size}"
            out.mkdir(parents=True, exist_ok=True)
            for stage in args.stages:
                res = spawn(args, stage, out / "run", size, out)
                rows.append(res)
                print(json.dumps(res), flush=True)
                if "stopped" in res or "failed" in res:
                    if stage in ("write", "rank-scores"):
                        break  # later stages need this one
    print(table(rows))


if __name__ == "__main__":
    main()
