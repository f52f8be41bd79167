"""The one precision decision (prefdata.llm.hardware): given flags, this machine's own flags, and every model load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prefdata.errors import PrefdataError
from prefdata.llm.hardware import auto_dtype, cpu_flags, cpu_has_native_bf16, resolve_dtype

AVX2_EPYC = {"fpu", "sse4_2", "avx", "avx2", "fma"}  # the AVX2-only AMD EPYC of the issue
SAPPHIRE = AVX2_EPYC | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.mark.parametrize(("flags", "want"), [
    (AVX2_EPYC, "float32"),
    (AVX2_EPYC | {"avx512f", "avx512bw"}, "float32"),  # AVX-512 without its bf16 extension still emulates bf16
    (AVX2_EPYC | {"avx512_bf16"}, "bfloat16"),
    (SAPPHIRE, "bfloat16"),
    ({"fp", "asimd", "bf16"}, "bfloat16"),  # Arm with BF16
    ({"fp", "asimd"}, "float32"),
    (set(), "float32"),  # no /proc/cpuinfo: the safe choice
])
def test_cpu_dtype_follows_the_flags(flags, want):
    assert auto_dtype(on_gpu=False, flags=flags) == want
    assert resolve_dtype("auto", on_gpu=False, flags=flags) == want
    assert resolve_dtype(None, on_gpu=False, flags=flags) == want


def test_gpu_dtype_is_bf16_where_supported_else_float16():
    assert auto_dtype(on_gpu=True, gpu_bf16=True, flags=AVX2_EPYC) == "bfloat16"
    assert auto_dtype(on_gpu=True, gpu_bf16=False, flags=SAPPHIRE) == "float16"


@pytest.mark.parametrize("explicit", ["float32", "bfloat16", "float16"])
def test_an_explicit_dtype_always_wins(explicit):
    for machine in ({"on_gpu": False, "flags": AVX2_EPYC}, {"on_gpu": False, "flags": SAPPHIRE},
                    {"on_gpu": True, "gpu_bf16": False}):
        assert resolve_dtype(explicit, **machine) == explicit


def test_a_dtype_name_that_does_not_exist_is_one_clear_error():
    with pytest.raises(PrefdataError, match="dtype must be one of auto, float32, bfloat16, float16; got 'fp8'"):
        resolve_dtype("fp8")


def test_this_machines_flags_are_read_from_cpuinfo():
    """The decision reads the real CPU: what `grep -o -m1 'avx512_bf16\\|amx_bf16' /proc/cpuinfo` says."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo")
    native = bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", info.read_text()))
    assert ("avx2" in cpu_flags()) == bool(re.search(r"\bavx2\b", info.read_text()))
    if native:
        assert cpu_has_native_bf16()
    import torch

    if not torch.cuda.is_available():
        assert auto_dtype() == ("bfloat16" if cpu_has_native_bf16() else "float32")


def test_the_hf_sampler_loads_in_this_machines_dtype(tiny_llama_dir):
    """The transformers sampler used bf16 for "auto" on every machine (the AVX2 crawl); now the machine decides."""
    from prefdata.generate import GenerateConfig
    from prefdata.generate.sampling import make_sampler

    s = make_sampler(GenerateConfig(backend="hf"), model_path=str(tiny_llama_dir))
    assert str(s.model.dtype) == f"torch.{auto_dtype()}"
    s32 = make_sampler(GenerateConfig(backend="hf", dtype="float32"), model_path=str(tiny_llama_dir))
    assert str(s32.model.dtype) == "torch.float32"


def test_the_reward_model_loads_in_this_machines_dtype(tiny_rm_dir):
    """The reward model was always float32; now "auto" follows the machine, and its judge hash says which."""
    from prefdata.judges.reward_model import RewardModelJudge

    judge = RewardModelJudge(str(tiny_rm_dir))
    assert judge.config()["dtype"] == auto_dtype()
    assert str(judge.model.dtype) == f"torch.{auto_dtype()}"
    assert RewardModelJudge(str(tiny_rm_dir), dtype="float32").config()["dtype"] == "float32"


def test_lora_base_follows_the_machine():
    """LoRA's frozen base was bf16 on any CPU; on a CPU without native bf16 it is float32 now."""
    import torch

    from prefdata.train.lora import weight_dtype

    class Cfg:
        dtype = "auto"
        lora_r = 8
        use_cpu = True

    want = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert weight_dtype(Cfg) == want
    Cfg.lora_r = 0
    assert weight_dtype(Cfg) == torch.float32
