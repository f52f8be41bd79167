"""Chat completions from an in-process vLLM engine, one batched `LLM.chat` call per round.

Pass an existing `vllm.LLM` (tests and the `iterate` loop share one engine) or let `load()` build one.
The engine is seeded (`LLM(seed=...)`), not each request: per-request seeds crash vLLM's CPU worker.
Every conversation is measured with the engine's tokenizer first: one longer than the engine's context would
make vLLM abort the whole batch, so it is failed alone as too_long and the rest are judged.
"""

from __future__ import annotations

import time
from typing import Any

from prefdata.judges.llm_judge import ChatOut, fit_context
from prefdata.llm.context import TokenBudget


class VLLMBackend:
    """A ChatBackend for `LLMPairJudge` over `vllm.LLM`."""

    def __init__(self, llm: Any, model_name: str) -> None:
        self.llm = llm
        self.model_name = model_name
        self._budget: TokenBudget | None = None

    def budget(self) -> TokenBudget | None:
        """The engine's tokenizer and max_model_len (None when the engine does not say)."""
        if self._budget is None:
            try:
                max_len = int(self.llm.llm_engine.model_config.max_model_len)
                self._budget = TokenBudget(self.llm.get_tokenizer(), max_len)
            except (AttributeError, TypeError, ValueError):
                return None
        return self._budget

    @classmethod
    def load(cls, model: str, *, seed: int = 0, max_model_len: int = 4096, dtype: str = "auto") -> VLLMBackend:
        from prefdata.llm.vllm_engine import start_engine

        return cls(start_engine(model, seed=seed, max_model_len=max_model_len, dtype=dtype), model)

    def config(self) -> dict[str, object]:
        return {"backend": "vllm", "model": self.model_name}

    def chat(
        self, convs: list[list[dict[str, str]]], *, max_tokens: int, temperature: float, top_logprobs: int | None
    ) -> list[ChatOut]:
        if not convs:
            return []
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, max_tokens=max_tokens, logprobs=top_logprobs)
        return fit_context(convs, self.budget(), max_tokens, lambda fit: self._chat(fit, params, top_logprobs))

    def _chat(self, convs: list[list[dict[str, str]]], params: Any, top_logprobs: int | None) -> list[ChatOut]:
        t0 = time.monotonic()
        try:
            outs = self.llm.chat(convs, params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - an engine error fails this batch, recorded per call
            lat = time.monotonic() - t0
            return [ChatOut(error=f"vLLM error: {type(e).__name__}: {e}", latency_s=lat) for _ in convs]
        lat = (time.monotonic() - t0) / len(convs)  # per-call share of the batch
        result: list[ChatOut] = []
        for o in outs:
            c = o.outputs[0]
            tops: dict[str, float] | None = None
            if top_logprobs and c.logprobs:
                tops = {}
                for lp in c.logprobs[0].values():
                    tok = lp.decoded_token or ""
                    tops[tok] = max(tops.get(tok, -1e30), float(lp.logprob))
            result.append(ChatOut(text=c.text, top_logprobs=tops, latency_s=lat))
        return result
