"""Throughput of `prefdata generate` (vLLM) against raw vLLM `LLM.chat` and transformers `generate`.

Same model, prompts and sampling parameters for all three; engine start and model loading are excluded.
Raw vLLM and prefdata share one engine and alternate, so neither gets a warmer cache.

    .venv/bin/python bench/bench_generate.py --prompts 32 --n 4 --max-tokens 128 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-sizes", default="64,8", help="prefdata prompts per shard to try")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--out", default=None, help="write a JSON result here")
    a = ap.parse_args()

    from vllm import LLM, SamplingParams

    from prefdata.generate import GenerateConfig, generate_run
    from prefdata.models import resolve_model
    from prefdata.run.prompts import load_prompts
    from prefdata.run.store import RunDir

    model = resolve_model(a.model)
    ps = load_prompts(None, limit=a.prompts)
    convs = [m.to_list() for m in ps.table["messages"]]
    llm = LLM(model=model, seed=0, dtype="bfloat16")
    params = SamplingParams(n=a.n, temperature=a.temperature, max_tokens=a.max_tokens)
    llm.chat(convs[:2], sampling_params=params, use_tqdm=False)  # warm-up

    results: dict[str, list[float]] = {"raw_vllm": []}
    for bs in a.batch_sizes.split(","):
        results[f"prefdata_bs{bs}"] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    prompt_file = tmp / "prompts.jsonl"
    prompt_file.write_text("\n".join(json.dumps({"messages": c}) for c in convs) + "\n")
    for r in range(a.repeats):
        t0 = time.time()
        outs = llm.chat(convs, sampling_params=params, use_tqdm=False)
        dt = time.time() - t0
        toks = sum(len(o.token_ids) for ro in outs for o in ro.outputs)
        results["raw_vllm"].append(toks / dt)
        for bs in a.batch_sizes.split(","):
            cfg = GenerateConfig(prompts=str(prompt_file), model=model, n=a.n, max_tokens=a.max_tokens,
                                 temperature=a.temperature, batch_size=int(bs), dtype="bfloat16")
            t0 = time.time()
            s = generate_run(RunDir(tmp / f"run-{bs}-{r}"), cfg, llm=llm, progress=False)
            dt = time.time() - t0  # whole call: prompt reading, hashing, shard writes included
            results[f"prefdata_bs{bs}"].append(s.tokens / dt)
    del llm

    if not a.skip_hf:
        results["transformers"] = []
        cfg = GenerateConfig(prompts=str(prompt_file), model=model, backend="hf", n=a.n, max_tokens=a.max_tokens,
                             temperature=a.temperature, hf_batch_size=8, batch_size=a.prompts)
        from prefdata.generate.sampling import make_sampler

        sampler = make_sampler(cfg, model_path=model)
        t0 = time.time()
        out = sampler.sample(convs, cfg.plan())
        dt = time.time() - t0
        toks = sum(c.n_tokens or 0 for per in out for kind in per for c in kind)
        results["transformers"].append(toks / dt)
    shutil.rmtree(tmp, ignore_errors=True)

    best = {k: max(v) for k, v in results.items()}
    report = {
        "setup": {"model": Path(model).name, "prompts": a.prompts, "n": a.n, "max_tokens": a.max_tokens,
                  "temperature": a.temperature, "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "tokens_per_s": results,
        "best_tokens_per_s": best,
    }
    raw = best["raw_vllm"]
    for k, v in best.items():
        if k.startswith("prefdata"):
            report[f"{k}_overhead_vs_raw_pct"] = round(100 * (1 - v / raw), 1)
            if "transformers" in best:
                report[f"{k}_speedup_vs_transformers"] = round(v / best["transformers"], 2)
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
