"""The in-process vLLM engine as a `ChatModel`: every conversation of a call goes to the engine at once.

The engine itself (start, stop, LoRA) lives in `vllm_engine`. Pass an existing `vllm.LLM` (tests and the `iterate`
loop share one engine) or let `open_model` start one. The engine is seeded (`LLM(seed=...)`), not each request:
per-request seeds crash vLLM's CPU worker. Every conversation is measured with the engine's tokenizer first: one
longer than the engine's context would make vLLM abort the whole batch, so it fails alone as too_long.
"""

from __future__ import annotations

import time
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.llm.chat import ChatOut, Completion, EngineModel, ModelSpec, OnDone, OnTick, Sampling, answered, normalize_finish
from prefdata.llm.context import TokenBudget


class VLLMChatModel(EngineModel):
    """A ChatModel over `vllm.LLM`. `lora`: the LoRA request every call sends (an engine serving a policy adapter);
    `owns`: the model started the engine, so `close` stops it."""

    engine = "vllm"
    tick_s = 1.0  # seconds between `on_tick` reports

    def __init__(self, llm: Any, name: str, *, lora: Any = None, owns: bool = False) -> None:
        self.llm = llm
        self.name = name
        self.lora = lora
        self.owns = owns
        self._budget: TokenBudget | None = None

    @property  # type: ignore[override]
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    @property  # type: ignore[override]
    def max_model_len(self) -> int | None:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            return None

    @property  # type: ignore[override]
    def dtype(self) -> str | None:
        from prefdata.llm.vllm_engine import engine_dtype

        return engine_dtype(self.llm)

    def budget(self) -> TokenBudget | None:
        """The engine's tokenizer and max_model_len (None when the engine does not say)."""
        if self._budget is None:
            max_len = self.max_model_len
            if max_len is None:
                return None
            self._budget = TokenBudget(self.tokenizer, max_len)
        return self._budget

    def close(self) -> None:
        if self.owns:
            from prefdata.llm.vllm_engine import shutdown_llm

            shutdown_llm(self.llm)

    def answer(self, convs: list[list[dict[str, str]]], samplings: list[Sampling], *, on_done: OnDone | None,
               on_tick: OnTick | None) -> list[ChatOut]:  # fmt: skip
        """All conversations go to the engine at once; `on_done(completions, tokens)` as each request finishes,
        `on_tick(requests in flight, tokens decoded)` about every `tick_s` seconds while they decode.

        The requests are queued, then the engine is stepped here (as `LLM.chat` does inside), so that each
        finished request reports while the rest of the batch still runs: with the whole batch in flight no request
        finishes until near the end, and a progress bar would sit at 0% while the engine works. The token count of
        `on_tick` is an estimate: each engine step decodes one token per unfinished sequence."""
        params_of: dict[Sampling, Any] = {}
        params = [params_of.setdefault(s, _params(s)) for s in samplings]
        t0 = time.monotonic()
        outs: list[Any] = [None] * len(convs)
        try:
            ids = self.llm.enqueue_chat(convs, sampling_params=params, use_tqdm=False, lora_request=self.lora)
            # add_request returns the internal id (with a random suffix); outputs carry the id it was given
            order = {}
            for k, rid in enumerate(ids):
                order[rid] = order[rid.split("-", 1)[0]] = k
            engine = self.llm.llm_engine
            running = sum(p.n for p in params)  # sequences still decoding
            in_flight, decoded, shown = len(ids), 0, time.monotonic()
            while engine.has_unfinished_requests():
                step_seqs = running
                for ro in engine.step():
                    if ro.finished and ro.request_id in order:
                        outs[order[ro.request_id]] = ro
                        running -= len(ro.outputs)
                        in_flight -= 1
                        if on_done is not None:
                            on_done(len(ro.outputs), sum(len(o.token_ids) for o in ro.outputs))
                decoded += step_seqs
                if on_tick is not None and time.monotonic() - shown >= self.tick_s:
                    shown = time.monotonic()
                    on_tick(in_flight, decoded)
        except Exception as e:  # noqa: BLE001 - an engine error fails this batch, one error per call
            lat = time.monotonic() - t0
            return [ChatOut(error=f"vLLM error: {type(e).__name__}: {e}", kind="engine", latency_s=lat) for _ in convs]
        if any(ro is None for ro in outs):
            raise PrefdataError("vLLM finished without returning every request; rerun the same command to resume")
        lat = (time.monotonic() - t0) / len(convs)  # per-call share of the batch
        return [_out(ro, s.top_logprobs, lat) for ro, s in zip(outs, samplings, strict=True)]


def _params(s: Sampling) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        n=s.count,
        temperature=s.temperature,
        top_p=1.0 if s.greedy else s.top_p,
        top_k=0 if (s.greedy or not s.top_k) else s.top_k,
        min_p=0.0 if s.greedy else s.min_p,
        repetition_penalty=s.repetition_penalty,
        max_tokens=s.max_tokens,
        stop=list(s.stop) or None,
        logprobs=s.top_logprobs,
    )


def _out(ro: Any, top_logprobs: int | None, latency_s: float) -> ChatOut:
    ordered = sorted(ro.outputs, key=lambda o: o.index)
    completions = [Completion(text=o.text, finish_reason=normalize_finish(o.finish_reason), n_tokens=len(o.token_ids))
                   for o in ordered]  # fmt: skip
    tops: dict[str, float] | None = None
    if top_logprobs and ordered and ordered[0].logprobs:
        tops = {}
        for lp in ordered[0].logprobs[0].values():
            tok = lp.decoded_token or ""
            tops[tok] = max(tops.get(tok, -1e30), float(lp.logprob))
    return answered(completions, tops, latency_s)


def open_model(spec: ModelSpec, llm: Any = None) -> VLLMChatModel:
    """Over a shared engine (`llm`), or one started here for `spec` (stopped by `close`). `spec.adapter`: a LoRA
    adapter folder is served on its base and every call sends its request (sampling a policy)."""
    from prefdata.llm import vllm_engine

    owns = llm is None
    if llm is None:
        if spec.model is None:
            raise PrefdataError("an in-process vLLM model needs a model folder or hub name")
        if spec.adapter:
            llm = vllm_engine.build_llm(spec, spec.model)
        else:
            llm = vllm_engine.start_engine(spec.model, seed=spec.seed, dtype=spec.dtype, max_model_len=spec.max_model_len,
                                           tensor_parallel_size=spec.tensor_parallel_size,
                                           gpu_memory_utilization=spec.gpu_memory_utilization)  # fmt: skip
    name = spec.label or str(getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "model", "llm"))
    lora = vllm_engine.lora_request(llm) if spec.adapter else None
    return VLLMChatModel(llm, name, lora=lora, owns=owns)
