"""Sampling over the chat-model interface: a GenerateConfig's plan turned into requests, the answers back per prompt.

The engine is whatever `prefdata.llm.chat.open_chat_model` opens for the config's `--backend`; this module holds
only what is sampling's own: one `Sampling` per plan entry (the config's top-p/top-k/min-p/stop), every plan entry
sent in one call (vLLM then shares each prompt's KV cache and keeps its batch full), a prompt that does not fit
the context skipped, and any other failure turned into one clear error (generate has no row to record it in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.generate.config import GenerateConfig, SampleSpec
from prefdata.llm.chat import ChatModel, Completion, ModelSpec, Sampling, open_chat_model
from prefdata.llm.context import TOO_LONG
from prefdata.llm.endpoint import endpoint_of


def model_spec(cfg: GenerateConfig, model_path: str | None = None) -> ModelSpec:
    """The chat model a GenerateConfig samples with. `model_path`: the resolved folder (in-process engines)."""
    if cfg.backend == "openai":
        if not cfg.base_url:
            raise PrefdataError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if not cfg.model:
            raise PrefdataError("--backend openai needs --model, the model name the server serves")
        return ModelSpec("openai", cfg.model, endpoint=endpoint_of(cfg), server_token_ids=cfg.server_token_ids)
    if model_path is None:
        from prefdata.models import resolve_model

        model_path = resolve_model(cfg.model)
    return ModelSpec(cfg.backend, model_path, seed=cfg.seed, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                     tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
                     batch_size=cfg.hf_batch_size, adapter=True)  # fmt: skip


class Sampler:
    """A GenerateConfig's sampling over one ChatModel (`engine`); the model's own attributes read through."""

    def __init__(self, engine: ChatModel, cfg: GenerateConfig) -> None:
        self.engine = engine
        self.cfg = cfg

    def __getattr__(self, name: str) -> Any:  # tokenizer, max_model_len, llm, model, dtype: the engine's
        if name in ("engine", "cfg"):
            raise AttributeError(name)
        return getattr(self.engine, name)

    @property
    def tick_s(self) -> float:
        return float(getattr(self.engine, "tick_s", 1.0))

    @tick_s.setter
    def tick_s(self, value: float) -> None:
        self.engine.tick_s = value  # type: ignore[attr-defined]

    def sampling(self, spec: SampleSpec) -> Sampling:
        c = self.cfg
        return Sampling(max_tokens=c.max_tokens, temperature=spec.temperature, n=spec.n, top_p=c.top_p, top_k=c.top_k,
                        min_p=c.min_p, repetition_penalty=c.repetition_penalty, stop=tuple(c.stop), whole_reply=False)  # fmt: skip

    def sample(self, conversations: list[list[dict[str, str]]], plan: list[SampleSpec],
               on_done: Callable[[int, int], None] | None = None,
               on_tick: Callable[[int, int], None] | None = None) -> list[list[list[Completion]] | None]:  # fmt: skip
        """out[prompt][plan entry] = completions; None for a prompt too long for the model's context.
        `on_done(completions, tokens)` per finished request; `on_tick` where the engine reports while decoding."""
        convs, samplings = [], []
        for spec in plan:
            s = self.sampling(spec)
            convs.extend(conversations)
            samplings.extend([s] * len(conversations))
        outs = self.engine.chat(convs, samplings, on_done=on_done, on_tick=on_tick)
        result: list[list[list[Completion]] | None] = []
        for i in range(len(conversations)):
            row = [outs[j * len(conversations) + i] for j in range(len(plan))]
            if any(o.kind == TOO_LONG for o in row):
                result.append(None)
                continue
            for o in row:
                if o.error is not None:
                    failure = getattr(self.engine, "failure", None)
                    raise failure(o) if failure else PrefdataError(f"{self.engine.engine} sampling failed: {o.error}")
            result.append([o.completions for o in row])
        return result


def make_sampler(cfg: GenerateConfig, llm: Any = None, model_path: str | None = None) -> Sampler:
    """The sampler for `cfg`: over `llm` (a shared in-process vLLM engine) or a model opened for the config."""
    return Sampler(open_chat_model(model_spec(cfg, model_path), llm), cfg)
