"""An OpenAI-compatible server as a `ChatModel`: request bodies in, `ChatOut`s back, over `openai_client.ChatClient`.

The client does the transport (several URLs, concurrency, rate limit, retries with backoff, the stop after
repeated connection failures, the /tokenize too_long check once `preflight` learned the context); this module only
builds each request body from its `Sampling` and reads the results back, failures included (values, never raised).
The API key is read from the environment variable the endpoint names and is never written anywhere.
"""

from __future__ import annotations

from typing import Any

from prefdata.errors import PrefdataError
from prefdata.llm.chat import ChatOut, Completion, EngineModel, ModelSpec, OnDone, OnTick, Sampling, answered, normalize_finish
from prefdata.llm.endpoint import Endpoint
from prefdata.llm.openai_client import ChatResult


class OpenAIChatModel(EngineModel):
    """A ChatModel over one or more OpenAI-compatible URLs. The server counts tokens (no local tokenizer)."""

    engine = "openai"

    def __init__(self, endpoint: Endpoint, model: str | None, *, what: str = "server", server_token_ids: bool = False) -> None:
        self.endpoint = endpoint
        self.client = endpoint.client(model, what=what)
        self.server_token_ids = server_token_ids

    @property
    def name(self) -> str | None:  # type: ignore[override]
        return self.client.model

    model = name

    @property  # type: ignore[override]
    def max_model_len(self) -> int | None:
        return self.client.max_model_len

    @property  # type: ignore[override]
    def unavailable(self) -> str | None:
        """Why the server counts as down (the run then stops early), else None."""
        return self.client.unavailable

    @property
    def concurrent_calls(self) -> int:
        """Calls in flight at once; `chat` may be called from several threads (they share these slots)."""
        return self.client.concurrency

    def preflight(self) -> list[str]:
        return self.client.preflight()

    def close(self) -> None:
        """Close the client's connections and stop its event-loop thread."""
        self.client.close()

    def body(self, conv: list[dict[str, str]], s: Sampling) -> dict[str, Any]:
        """The request body: only what differs from the server's defaults, vLLM's extra parameters where set."""
        body: dict[str, Any] = {"messages": conv, "temperature": s.temperature, "max_tokens": s.max_tokens}
        if s.n is not None:
            body["n"] = s.n
        if not s.greedy and s.top_p < 1.0:
            body["top_p"] = s.top_p
        if s.stop:
            body["stop"] = list(s.stop)
        if s.top_k and not s.greedy:  # vLLM's extra sampling parameters (sent as extra_body)
            body["top_k"] = s.top_k
        if s.min_p and not s.greedy:
            body["min_p"] = s.min_p
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if s.top_logprobs:
            body.update(logprobs=True, top_logprobs=s.top_logprobs)
        if self.server_token_ids:
            body["return_token_ids"] = True  # vLLM: exact completion token counts per choice
        return body

    def answer(self, convs: list[list[dict[str, str]]], samplings: list[Sampling], *, on_done: OnDone | None,
               on_tick: OnTick | None) -> list[ChatOut]:  # fmt: skip
        """One request per conversation (n completions each); `on_done(completions, tokens)` per answered request. The
        server counts the tokens: a conversation too long for it comes back as too_long."""

        def done(r: ChatResult) -> None:
            if on_done is not None and r.error is None:
                on_done(len(r.choices), sum(ch.n_tokens or 0 for ch in r.choices))

        results = self.client.chat([self.body(c, s) for c, s in zip(convs, samplings, strict=True)], on_done=done)
        return [_out(r) for r in results]

    def failure(self, out: ChatOut) -> PrefdataError:
        """One clear line for a failed call of a stage that cannot record it (generate)."""
        url = ", ".join(self.endpoint.base_url)
        if out.kind in ("connection", "not_sent"):
            return PrefdataError(f"cannot reach the server at {url}: {out.error}; check --base-url and that the server is up")
        if out.status == 401:
            return PrefdataError(f"the server at {url} refused the API key; set it in the environment variable named by --api-key-env")
        if out.status == 404:
            return PrefdataError(f"the server at {url} answered 404: {out.error}; check --model (the served model name) and --base-url")
        if out.status is not None:
            return PrefdataError(f"the server at {url} answered {out.status}: {out.error}")
        return PrefdataError(f"request to {url} failed after retries: {out.error}")


def _out(r: ChatResult) -> ChatOut:
    if r.error is not None:
        return ChatOut(error=r.error, kind=r.kind, status=r.status, latency_s=r.latency_s, attempts=r.attempts)
    completions = [Completion(text=ch.text, finish_reason=normalize_finish(ch.finish_reason), n_tokens=ch.n_tokens)
                   for ch in r.choices]  # fmt: skip
    first = r.choices[0].top_logprobs if r.choices else None
    return answered(completions, first, r.latency_s, r.attempts)


def open_model(spec: ModelSpec, llm: Any = None) -> OpenAIChatModel:
    """A model behind `spec.endpoint`; `spec.preflight`: check every URL's /models first (and pick the served model
    when `spec.model` is none)."""
    if spec.endpoint is None or not spec.endpoint.base_url:
        raise PrefdataError("the openai engine needs --base-url (e.g. http://127.0.0.1:8000/v1)")
    model = OpenAIChatModel(spec.endpoint, spec.model, what=spec.what, server_token_ids=spec.server_token_ids)
    if spec.preflight:
        model.preflight()
    return model
