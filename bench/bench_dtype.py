"""`prefdata generate` on the demo model under each dtype and CPU thread setting, side by side in one run.

Each setting is a fresh `prefdata generate` process (its own engine), one after the other, on the same prompts:
the default (`--dtype auto`: this machine's choice), both explicit dtypes, and vLLM's CPU thread binding set to
use both cores instead of its default (one compute core, the other reserved for the frontend).

    .venv/bin/python bench/bench_dtype.py --limit 16 --n 4 --max-tokens 128
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "default (auto)": ([], {}),
    "--dtype float32": (["--dtype", "float32"], {}),
    "--dtype bfloat16": (["--dtype", "bfloat16"], {}),
    "auto, VLLM_CPU_OMP_THREADS_BIND=0-1": ([], {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
    "float32, VLLM_CPU_OMP_THREADS_BIND=0-1": (["--dtype", "float32"],
                                               {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--only", default=None, help="setting names to run, separated by | (default: all)")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temp folder)")
    a = ap.parse_args()

    from prefdata.llm.hardware import auto_dtype, cpu_flags, cpu_model

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, flags {' '.join(flags)}; auto resolves to {auto_dtype()}")
    print(f"job: {a.limit} MT-Bench prompts x {a.n} completions, max {a.max_tokens} tokens, temperature 0.8"
          f"; load average at start {os.getloadavg()[0]:.1f}")
    print("| setting | resolved dtype | sampling tok/s | tokens | wall s (engine start included) |")
    print("|---|---|---|---|---|", flush=True)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench-dtype-"))
    only = set(a.only.split("|")) if a.only else None
    for name, (flags_, env) in SETTINGS.items():
        if only and name not in only:
            continue
        run = work / re.sub(r"\W+", "-", name)
        cmd = [sys.executable, "-m", "prefdata.cli", "generate", "--run", str(run), "--limit", str(a.limit),
               "-n", str(a.n), "--max-tokens", str(a.max_tokens), *flags_]
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        wall = time.time() - t0
        if out.returncode != 0:
            print(f"| {name} | failed ({out.returncode}) | | | {wall:.0f} |  {out.stderr.strip().splitlines()[-1:]}")
            continue
        speed = re.search(r"sampling ([\d.]+) tokens/s", out.stdout)
        tokens = re.search(r"(\d+) tokens\n", out.stdout)
        dtype = re.search(r"\((?:vllm), (\w+)\)", out.stderr)
        print(f"| {name} | {dtype.group(1) if dtype else '?'} | {speed.group(1) if speed else '?'} | "
              f"{tokens.group(1) if tokens else '?'} | {wall:.0f} (load {os.getloadavg()[0]:.1f}) |", flush=True)


if __name__ == "__main__":
    main()
