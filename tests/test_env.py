"""`prefdata env`: the bug-report block names what this machine is and what prefdata will decide on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from prefdata.llm import hardware


def test_prefdata_env_prints_versions_cpu_decisions_and_caches(tmp_path):
    exe = Path(sys.executable).with_name("prefdata")
    env = {**os.environ, "PREFDATA_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([str(exe), "env"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "prefdata env (paste this block into a bug report)"
    got = dict(line[2:].split(": ", 1) for line in lines if line.startswith("- "))
    assert got["torch"] == torch.__version__ and got["prefdata"] and got["transformers"] and got["vllm"]
    for name in ("openai", "datasets", "polars", "typer", "peft", "python", "OS", "CPU cores", "GPU"):
        assert got[name], name
    assert got["CPU"] == hardware.cpu_model()
    flags = {f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in Path("/proc/cpuinfo").read_text().split()}
    assert got["CPU flags"] == ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    want = "bfloat16" if torch.cuda.is_available() or native else "float32"  # a bf16-less GPU would say float16
    assert got['dtype "auto" (samplers, judges, reward models)'].startswith(hardware.auto_dtype())
    assert torch.cuda.is_available() or hardware.auto_dtype() == want
    assert got["train"].startswith("bf16 autocast" if native or torch.cuda.is_available() else "float32")
    assert got["prefdata cache"] == f"{tmp_path / 'cache'} (PREFDATA_CACHE)"
    assert got["Hugging Face cache"]
    assert got["vLLM CPU threads"] == hardware.vllm_cpu_threads() and "VLLM_CPU_OMP_THREADS_BIND" in got["vLLM CPU threads"]


def test_prefdata_env_does_not_import_vllm():
    code = "import sys; from prefdata.cli.commands.env import env_lines; env_lines(); print('vllm' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr
