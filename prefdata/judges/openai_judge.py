"""The LLM judge over an OpenAI-compatible server: a ChatBackend adapter over `llm.openai_client.ChatClient`.

The client does the transport (several URLs, concurrency, rate limit, retries with backoff, the stop after
repeated connection failures, the /tokenize too_long check); this adapter only builds the judge's request
body and turns each result into a `ChatOut`, failures included (recorded, never raised).
"""

from __future__ import annotations

from typing import Any

from prefdata.judges.llm_judge import ChatOut
from prefdata.llm.openai_client import ChatClient


class OpenAIBackend:
    """A ChatBackend for `LLMPairJudge` (see llm_judge.py). Keyword arguments go to `ChatClient`."""

    def __init__(self, base_urls: list[str], model: str | None = None, **kwargs: Any) -> None:
        self.client = ChatClient(base_urls, model, what="judge server", **kwargs)

    @property
    def model(self) -> str | None:
        return self.client.model

    @property
    def unavailable(self) -> str | None:
        """Why the judge server counts as down (the run then stops early), else None."""
        return self.client.unavailable

    @property
    def concurrent_calls(self) -> int:
        """Calls in flight at once; `chat` may be called from several threads (they share these slots)."""
        return self.client.concurrency

    def preflight(self) -> list[str]:
        return self.client.preflight()

    def config(self) -> dict[str, object]:
        """What changes verdicts (the model); URLs, concurrency and retries do not."""
        return {"backend": "openai", "model": self.model}

    def chat(
        self, convs: list[list[dict[str, str]]], *, max_tokens: int, temperature: float, top_logprobs: int | None
    ) -> list[ChatOut]:
        bodies: list[dict[str, Any]] = []
        for conv in convs:
            body: dict[str, Any] = {"messages": conv, "max_tokens": max_tokens, "temperature": temperature}
            if top_logprobs:
                body.update(logprobs=True, top_logprobs=top_logprobs)
            bodies.append(body)
        out = []
        for r in self.client.chat(bodies):
            first = r.choices[0] if r.choices else None
            out.append(ChatOut(text=first.text if first else "", top_logprobs=first.top_logprobs if first else None,
                               error=r.error, latency_s=r.latency_s, attempts=r.attempts))
        return out
