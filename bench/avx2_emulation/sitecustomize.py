"""Make this process (and the vLLM engine processes it spawns, which inherit PYTHONPATH) take the code paths of an
AVX2-only CPU on a machine that has AVX-512: vLLM picks its kernels by `torch.cpu._is_avx512_supported()`, torch by
ATEN_CPU_CAPABILITY, oneDNN by ONEDNN_MAX_CPU_ISA (bench_dtype.py --emulate-avx2 sets both). An emulation, not the
real machine: clock speed, caches and memory bandwidth stay this machine's."""

import os

if os.environ.get("PREFDATA_BENCH_EMULATE_AVX2") == "1":
    import torch

    torch.cpu._is_avx512_supported = lambda: False  # type: ignore[attr-defined]
    torch.cpu._is_avx512_bf16_supported = lambda: False  # type: ignore[attr-defined]
    torch.cpu._is_amx_tile_supported = lambda: False  # type: ignore[attr-defined]
