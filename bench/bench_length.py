"""Length exploitation in miniature: a judge whose score is the answer's length, three rounds of DPO vs AIPO.

The judge is a `python:` verifier (`length` below: the number of words), so every round's pairs prefer the
longer answer. Both loops start from the same model with the same settings; only `--loss` differs. Each round's
checkpoint is evaluated on held-out arithmetic problems with `verify:number` (accuracy) and its mean answer
length. The AIPO paper reports that iterative DPO inflates length round over round and that AIPO's NLL term
and agreement-aware margin curb it; this shows whether a 135M model in three short rounds does the same.

    python bench/bench_length.py --workdir runs/bench_length            # both loops, then the table
    python bench/bench_length.py --workdir runs/bench_length --report   # only the table of finished loops

Reruns resume (each loop is a `prefdata iterate` workdir).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import polars as pl

LENGTH_JUDGE = Path(__file__).resolve()


def length(messages: list[dict[str, str]], completion: str, reference: str) -> float:
    """The judge: longer is better (words)."""
    return float(len(completion.split()))


def loop_args(workdir: Path, loss: str, a: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "prefdata.cli", "iterate", "--workdir", str(workdir / loss), "--rounds", str(a.rounds),
        "--prompts", "arithmetic", "--prompts-per-round", str(a.prompts_per_round), "-n", str(a.n),
        "--temperature", str(a.temperature), "--max-tokens", str(a.max_tokens),
        "--judge", f"python:{LENGTH_JUDGE}:length", "--eval-judge", "verify:number",
        "--eval-prompts", "arithmetic-eval", "--eval-size", str(a.eval_size), "--keep-truncated",
        "--loss", loss, "--max-steps", str(a.max_steps), "--set", "generate.reference_field=answer",
        "--set", "rank.kinds=[sample]", "--set", f"train.learning_rate={a.lr}",
        "--set", f"train.per_device_train_batch_size={a.batch_size}", "--set", "train.gradient_checkpointing=false",
        "--set", "train.logging_steps=1", "--quiet",
    ]


def report(workdir: Path) -> str:
    lines = ["| loss | round | pairs | chosen len | rejected len | eval mean length (tokens) | eval accuracy [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for loss in ("dpo", "aipo"):
        f = workdir / loss / "rounds.parquet"
        if not f.is_file():
            continue
        for r in pl.read_parquet(f).iter_rows(named=True):
            acc = r.get("eval_accuracy")
            acc_s = "–" if acc is None else f"{acc:.3f} [{r['eval_accuracy_low']:.3f}, {r['eval_accuracy_high']:.3f}]"
            lines.append(f"| {loss} | {r['round']} | {r['pairs']} | {r['chosen_len_mean']:.1f} | {r['rejected_len_mean']:.1f} | "
                         f"{r['eval_len_mean'] or 0:.1f} (start {r['eval_baseline_len_mean'] or 0:.1f}) | {acc_s} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_length"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts-per-round", type=int, default=32)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--eval-size", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--report", action="store_true", help="Only print the table of the finished loops.")
    a = ap.parse_args()
    if not a.report:
        for loss in ("dpo", "aipo"):
            print(f"== {loss} ==", flush=True)
            subprocess.run(loop_args(a.workdir, loss, a), check=True)
    table = report(a.workdir)
    print(table)
    (a.workdir / "bench_length.md").write_text(table + "\n")
    print(json.dumps({"workdir": str(a.workdir)}))


if __name__ == "__main__":
    main()
