"""In-process vLLM sampling: `n` completions per prompt in one request (the prompt's KV cache is shared).

The engine itself (start, stop, LoRA) lives in `backends/vllm_engine.py`; this is only the sampling adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.llm.context import chat_token_ids
from prefdata.llm.vllm_engine import lora_request
from prefdata.samplers import Completion, SampleSpec, normalize_finish


class VLLMSampler:
    name = "vllm"
    tick_s = 1.0  # seconds between `on_tick` reports

    def __init__(self, llm: Any, cfg: Any):
        self.llm = llm
        self.cfg = cfg
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(chat_token_ids(self.tokenizer, messages))

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
               on_done: Callable[[int, int], None] | None = None,
               on_tick: Callable[[int, int], None] | None = None) -> list[list[list[Completion]]]:
        """Returns out[prompt][plan entry] = completions. All kinds go to the engine at once.

        The requests are queued, then the engine is stepped here (as `LLM.chat` does inside), so that each
        finished request reports `on_done(completions, tokens)` while the rest of the batch is still running,
        and `on_tick(requests in flight, tokens decoded so far)` about every second: with the whole batch in flight
        no request finishes until near the end, and the bar would sit at 0% while the engine works.
        The token count is an estimate: each engine step decodes one token per unfinished sequence.
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
