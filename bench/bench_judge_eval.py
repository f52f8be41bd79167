"""Judge quality against human labels: the demo model (SmolLM2-135M-Instruct) as judge on HH-RLHF.

Runs `prefdata.eval.judge_eval.evaluate` with one in-process vLLM engine shared by several judge settings.
Usage: python bench/bench_judge_eval.py --data tests/data/hh_rlhf_helpful_test_300.jsonl [--limit 300]
       [--mt-bench-limit 40] [--out-dir /tmp/judge-eval]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--mt-bench-limit", type=int, default=40)
    ap.add_argument("--mt-bench-max-tokens", type=int, default=256)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()
    from vllm import LLM

    from prefdata.eval.judge_eval import JudgeEvalConfig, evaluate
    from prefdata.models import demo_model_dir

    llm = LLM(model=str(demo_model_dir()), seed=0, max_model_len=4096, dtype="bfloat16")
    runs = [
        ("verdict-only, logprobs", dict(judge="verdict-only", logprobs=True, limit=args.limit)),
        ("verdict-only, text", dict(judge="verdict-only", limit=args.limit)),
        ("mt-bench-pair-v2, text", dict(judge="mt-bench-pair-v2", limit=args.mt_bench_limit,
                                        max_tokens=args.mt_bench_max_tokens)),
    ]
    for name, kw in runs:
        out = str(Path(args.out_dir) / name.replace(", ", "-").replace(" ", "_")) if args.out_dir else None
        cfg = JudgeEvalConfig(data=args.data, judge_model="demo", progress=False, batch_size=128, out=out, **kw)
        s = evaluate(cfg, llm=llm)
        s["judge"] = {k: v for k, v in s["judge"].items() if k != "template_sha256"}
        print(json.dumps({"setting": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}}),
              flush=True)


if __name__ == "__main__":
    main()
