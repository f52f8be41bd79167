"""Reward-model judge throughput: length-sorted padded batches vs scoring one completion at a time.

Model: a random LlamaForSequenceClassification (num_labels=1) with the demo tokenizer; its size is set by
flags (default 4 layers, hidden 256: small enough for a 2-core CPU, big enough that compute dominates).
Inputs: `--n` completions of 20..300 words under one prompt. Also checks batched == single scores.
`--vllm` also scores the same inputs with the vLLM pooling backend (engine start timed apart) and reports its
largest score difference from the transformers scores.
Usage: python bench/bench_judge_rm.py [--n 128] [--batch 1 8 32] [--dtype float32|bfloat16] [--vllm]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from prefdata.judges.reward_model import RewardModelJudge
from prefdata.judges.verdict import Candidate, ScoreRequest
from prefdata.models import demo_model_dir


def build(out: Path, layers: int, hidden: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, head_dim=64,
                      max_position_embeddings=2048, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--vllm", action="store_true", help="also time the vLLM pooling backend on the same inputs")
    args = ap.parse_args()
    import torch

    rng = random.Random(0)
    words = "the cat sat on a mat while rain fell over quiet hills and rivers ran to distant seas".split()
    reqs = [ScoreRequest("p", (("user", "Write something about cats."),),
                         Candidate(f"c{i}", " ".join(rng.choice(words) for _ in range(rng.randint(20, 300)))))
            for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        path = build(Path(tmp) / "rm", args.layers, args.hidden)
        results = {"n": args.n, "layers": args.layers, "hidden": args.hidden, "dtype": args.dtype,
                   "threads": torch.get_num_threads()}
        print(json.dumps(results), flush=True)
        ref = None
        for bs in args.batch:
            judge = RewardModelJudge(str(path), batch_size=bs, dtype=args.dtype)
            judge.score(reqs[:4])  # warm-up
            t0 = time.perf_counter()
            if bs == 1:
                res = [judge.score([q])[0] for q in reqs]  # one completion per call, as most recipes do
            else:
                res = judge.score(reqs)
            dt = time.perf_counter() - t0
            scores = [r.score for r in res]
            if ref is None:
                ref = scores
            diff = max(abs(a - b) for a, b in zip(scores, ref, strict=True))
            results[f"bs{bs}"] = {"seconds": round(dt, 3), "per_s": round(args.n / dt, 2), "max_abs_diff_vs_bs1": diff}
            print(json.dumps({"batch": bs, **results[f"bs{bs}"]}), flush=True)
        base = results[f"bs{args.batch[0]}"]["seconds"]
        for bs in args.batch[1:]:
            print(f"speedup bs{bs} vs bs{args.batch[0]}: {base / results[f'bs{bs}']['seconds']:.2f}x")
        if args.vllm:
            from prefdata.judges.reward_model_vllm import VLLMRewardModelJudge

            t0 = time.perf_counter()
            vj = VLLMRewardModelJudge(str(path), dtype=args.dtype)
            start = time.perf_counter() - t0
            vj.score(reqs[:4])  # warm-up
            t0 = time.perf_counter()
            res = vj.score(reqs)
            dt = time.perf_counter() - t0
            diff = max(abs(a.score - b) for a, b in zip(res, ref, strict=True))  # type: ignore[operator]
            best_hf = min(results[f"bs{bs}"]["seconds"] for bs in args.batch)
            print(json.dumps({"backend": "vllm", "engine_start_s": round(start, 1), "seconds": round(dt, 3),
                              "per_s": round(args.n / dt, 2), "max_abs_diff_vs_hf_bs1": diff,
                              "speedup_vs_best_hf": round(best_hf / dt, 2)}), flush=True)


if __name__ == "__main__":
    main()
