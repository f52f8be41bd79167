"""The LLM pairwise judge: template rendering, verdict parsing, one repair follow-up, logprob mode.

The model is any `prefdata.llm.chat.ChatModel` (an OpenAI-compatible server, vLLM in the same process, ...);
everything that decides a verdict lives here, so every engine gives the same verdicts for the same replies.
"""

from __future__ import annotations

import math

from prefdata.judges.templates import JudgeTemplate
from prefdata.judges.verdict import PairRequest, Verdict
from prefdata.llm.chat import ChatModel, ChatOut, Sampling

TOP_LOGPROBS = 20


class LLMPairJudge:
    """Pairwise judge over any ChatModel (kept as `backend`).

    Text mode: the template's rule reads the verdict; a reply without a readable verdict is kept, the judge is
    asked once more with the template's `repair` message, and a second failure is recorded as a failure.
    Logprob mode: one output token; p = P(A) / (P(A) + P(B)) over the first token's top log-probs (labels
    compared after stripping whitespace); |p - 0.5| <= tie_band is a tie; p is kept as the score.
    """

    def __init__(
        self,
        template: JudgeTemplate,
        backend: ChatModel,
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        logprobs: bool = False,
        tie_band: float = 0.05,
    ) -> None:
        if logprobs and not template.logprob_labels:
            from prefdata.errors import PrefdataError

            raise PrefdataError(
                f"judge template {template.name} has no logprob_labels; use a one-token template such as "
                "verdict-only with --logprobs"
            )
        self.template = template
        self.backend = backend
        self.temperature = temperature
        self.max_tokens = max_tokens or template.max_tokens
        self.logprobs = logprobs
        self.tie_band = tie_band

    def config(self) -> dict[str, object]:
        return {
            "kind": "llm-pairwise",
            "template": self.template.name,
            "template_sha256": self.template.sha256,
            "temperature": self.temperature,
            "max_tokens": 1 if self.logprobs else self.max_tokens,
            "logprobs": self.logprobs,
            "tie_band": self.tie_band if self.logprobs else None,
            **self.backend.config(),
        }

    @property
    def unavailable(self) -> str | None:
        """Why the backend gave up on its endpoint (the stage stops early), or None."""
        return getattr(self.backend, "unavailable", None)

    @property
    def concurrent_calls(self) -> int | None:
        """How many calls the backend runs at once when `judge` is called from several threads (None: not safe)."""
        return getattr(self.backend, "concurrent_calls", None)

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        if not requests:
            return []
        convs = [self.template.render(r) for r in requests]
        if self.logprobs:
            outs = self.backend.chat(convs, self._sampling(1, TOP_LOGPROBS))
            return [self._from_logprobs(r, o) for r, o in zip(requests, outs, strict=True)]
        outs = self.backend.chat(convs, self._sampling(self.max_tokens))
        verdicts: list[Verdict | None] = [None] * len(requests)
        retry: list[int] = []
        for i, (req, out) in enumerate(zip(requests, outs, strict=True)):
            if out.error is not None:
                verdicts[i] = Verdict.from_slot(
                    req, None, raw=out.text, error=out.error, latency_s=out.latency_s, attempts=out.attempts
                )
                continue
            slot, err = self.template.rule.parse(out.text)
            if slot is None:
                retry.append(i)
            else:
                verdicts[i] = Verdict.from_slot(req, slot, raw=out.text, latency_s=out.latency_s, attempts=out.attempts)
        if retry:
            rconvs = [self.template.repair_messages(convs[i], outs[i].text) for i in retry]
            routs = self.backend.chat(rconvs, self._sampling(self.max_tokens))
            for i, ro in zip(retry, routs, strict=True):
                first = outs[i]
                raw = f"{first.text}\n<<<repair>>>\n{ro.text}"
                lat = first.latency_s + ro.latency_s
                att = first.attempts + ro.attempts
                if ro.error is not None:
                    verdicts[i] = Verdict.from_slot(requests[i], None, raw=raw, error=f"repair: {ro.error}", latency_s=lat,
                                                    attempts=att, repaired=True)
                    continue
                slot, err = self.template.rule.parse(ro.text)
                verdicts[i] = Verdict.from_slot(
                    requests[i], slot, raw=raw, error=None if slot else f"{err} (after repair)", latency_s=lat,
                    attempts=att, repaired=True,
                )
        return [v for v in verdicts if v is not None]

    def _sampling(self, max_tokens: int, top_logprobs: int | None = None) -> Sampling:
        """One verdict per call; the whole reply must fit the context (a cut verdict is none)."""
        return Sampling(max_tokens=max_tokens, temperature=self.temperature, top_logprobs=top_logprobs)

    def _from_logprobs(self, req: PairRequest, out: ChatOut) -> Verdict:
        kw = {"raw": out.text, "latency_s": out.latency_s, "attempts": out.attempts}
        if out.error is not None:
            return Verdict.from_slot(req, None, error=out.error, **kw)
        if not out.top_logprobs:
            return Verdict.from_slot(req, None, error="logprob: server returned no logprobs", **kw)
        mass = {"a": 0.0, "b": 0.0}
        for tok, lp in out.top_logprobs.items():
            slot = self.template.logprob_labels.get(tok.strip())
            if slot in mass:
                mass[slot] += math.exp(lp)
        total = mass["a"] + mass["b"]
        if total <= 0.0:
            return Verdict.from_slot(req, None, error="logprob: neither label among the top tokens", **kw)
        p_first = mass["a"] / total
        slot = "tie" if abs(p_first - 0.5) <= self.tie_band else ("a" if p_first > 0.5 else "b")
        return Verdict.from_slot(req, slot, score=p_first, **kw)
