"""Hardware decisions, made in one place for every stage: which dtype an engine or model load uses.

bf16 is fast only where the hardware computes it: a CUDA GPU of Ampere or newer, or a CPU with AVX512-BF16 or
AMX (or Arm's BF16). On an AVX2-only CPU bf16 is emulated: vLLM falls back to torch linear and sampled at a
quarter of float32's speed (18.1 vs 72.8 tokens/s, bench/RESULTS.md). So "auto" means the fastest exact-enough
dtype for this machine, and an explicit dtype always wins.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

DTYPE_NAMES = ("float32", "bfloat16", "float16")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 / AMX, Arm BF16


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux `/proc/cpuinfo`; empty elsewhere)."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name, for run.json, `prefdata env` and benchmark tables."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("model name", "Model", "Hardware")):
            return line.partition(":")[2].strip()
    import platform

    return platform.processor() or platform.machine() or "unknown"


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU (or one with `flags`) computes bf16 in hardware."""
    return bool(set(cpu_flags() if flags is None else flags) & NATIVE_BF16_FLAGS)


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no (working) torch means no GPU either
        return False


def cuda_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def auto_dtype(*, on_gpu: bool | None = None, flags: Iterable[str] | None = None, gpu_bf16: bool | None = None) -> str:
    """The dtype "auto" resolves to: bf16 on a bf16 GPU, else float16 on a GPU; bf16 on a CPU that computes it
    natively, else float32. The arguments override what is read off this machine (tests, `prefdata env`)."""
    if on_gpu is None:
        on_gpu = cuda_available()
    if on_gpu:
        return "bfloat16" if (cuda_bf16() if gpu_bf16 is None else gpu_bf16) else "float16"
    return "bfloat16" if cpu_has_native_bf16(flags) else "float32"


def resolve_dtype(requested: str | None, **machine: object) -> str:
    """An explicit dtype as given; "auto" (or None) as `auto_dtype` decides for this machine."""
    if requested in (None, "", "auto"):
        return auto_dtype(**machine)  # type: ignore[arg-type]
    if requested not in DTYPE_NAMES:
        from prefdata.errors import PrefdataError

        raise PrefdataError(f"dtype must be one of auto, {', '.join(DTYPE_NAMES)}; got {requested!r}")
    return str(requested)


def torch_dtype(name: str) -> object:
    import torch

    return getattr(torch, name)


def vllm_cpu_threads() -> str:
    """What the vLLM CPU worker's threads will be: prefdata keeps vLLM's own binding (one compute thread per
    physical core of the NUMA node but the reserved ones). Binding both cores of the 2-core machine
    (`VLLM_CPU_OMP_THREADS_BIND=0-1`) sampled at 0.6x the default's speed: the frontend then competes with the
    compute threads (bench/RESULTS.md §9). A user's `VLLM_CPU_OMP_THREADS_BIND` is passed through as set."""
    import os

    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    reserved = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU")
    cores = os.cpu_count() or 1
    if bind == "auto":
        return (f"vLLM's default binding (VLLM_CPU_OMP_THREADS_BIND=auto): {max(1, cores - 1)} compute core(s), "
                f"{min(1, cores - 1) if reserved is None else reserved} reserved for the frontend, of {cores}")
    return f"VLLM_CPU_OMP_THREADS_BIND={bind}" + (f", VLLM_CPU_NUM_OF_RESERVED_CPU={reserved}" if reserved else "")


# ---------------------------------------------------------------- training (train/ asks these)


def trains_on_cpu(use_cpu: bool = False) -> bool:
    """No accelerator that transformers would pick before the CPU (CUDA, XPU, MPS)."""
    if use_cpu:
        return True
    import torch

    xpu = getattr(torch, "xpu", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available()) or torch.backends.mps.is_available())


def train_bf16(use_cpu: bool = False) -> bool:
    """Whether training turns bf16 autocast on by default: on a CUDA GPU with bf16 (Ampere or newer), and on a machine
    that trains on its CPU when that CPU computes bf16 natively (AVX512-BF16 or AMX), where it about doubles the
    matmul speed (bench/RESULTS.md §4d). Not on an older CPU, where bf16 is emulated and slower."""
    if not use_cpu and cuda_available():
        return cuda_bf16()
    return trains_on_cpu(use_cpu) and cpu_has_native_bf16()


def train_weight_dtype(requested: str, lora_r: int, use_cpu: bool = False) -> str:
    """The dtype training loads weights in: as given; for "auto", float32 master weights for a full fine-tune, and
    for LoRA a frozen base in this machine's fast dtype (bf16 where it is native, float32 on an AVX2-only CPU)."""
    if requested != "auto":
        return requested
    if lora_r <= 0:
        return "float32"
    return auto_dtype(on_gpu=not trains_on_cpu(use_cpu) and cuda_available())
