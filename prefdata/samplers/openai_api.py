"""The openai sampler: a thin adapter over `llm.openai_client.ChatClient`.

It builds one request per (prompt, plan entry) with `n` completions and turns the results back into
`Completion`s. The client retries (429, 5xx, timeouts, dropped connections) and returns failures as values;
here a prompt the server refused as too long is skipped (None), and any other failure stops generate with
one clear error (a sampler has no row in which to record a failed call). The API key is read from the
environment variable named in the config and never written anywhere (run.json records only its name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.llm.context import TOO_LONG
from prefdata.llm.openai_client import ChatClient, ChatResult
from prefdata.samplers import Completion, SampleSpec, normalize_finish


class OpenAISampler:
    name = "openai"

    def __init__(self, cfg: Any):
        if not cfg.base_url:
            raise PrefdataError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if not cfg.model:
            raise PrefdataError("--backend openai needs --model, the model name the server serves")
        self.cfg = cfg
        self.client = ChatClient(
            [cfg.base_url], cfg.model, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
            max_retries=cfg.max_retries, backoff_s=getattr(cfg, "backoff_s", 1.0),
            requests_per_minute=getattr(cfg, "requests_per_minute", None), timeout_s=cfg.timeout,
        )
        self.tokenizer = None

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int | None:
        return None  # the server decides; an over-long prompt comes back as a 400 and is skipped

    def _body(self, messages: list[dict[str, str]], spec: SampleSpec) -> dict[str, Any]:
        c = self.cfg
        body: dict[str, Any] = {"messages": messages, "n": spec.n, "temperature": spec.temperature, "max_tokens": c.max_tokens}
        if spec.temperature > 0 and c.top_p < 1.0:
            body["top_p"] = c.top_p
        if c.stop:
            body["stop"] = list(c.stop)
        if c.top_k and spec.temperature > 0:  # vLLM's extra sampling parameters (sent as extra_body)
            body["top_k"] = c.top_k
        if c.min_p and spec.temperature > 0:
            body["min_p"] = c.min_p
        if c.repetition_penalty != 1.0:
            body["repetition_penalty"] = c.repetition_penalty
        if c.server_token_ids:
            body["return_token_ids"] = True  # vLLM: exact completion token counts per choice
        return body

    def sample(self, conversations: list[list[dict[str, str]]], plan: list[SampleSpec],
               on_done: Callable[[int, int], None] | None = None) -> list[list[list[Completion]] | None]:
        """out[prompt][plan entry]; None for a prompt the server refused as too long. `on_done` per request."""

        def done(r: ChatResult) -> None:
            if on_done is not None and r.error is None:
                on_done(len(r.choices), sum(ch.n_tokens or 0 for ch in r.choices))

        results = self.client.chat([self._body(conv, spec) for conv in conversations for spec in plan], on_done=done)
        out: list[list[list[Completion]] | None] = []
        for i in range(len(conversations)):
            row = results[i * len(plan) : (i + 1) * len(plan)]
            if any(r.kind == TOO_LONG for r in row):
                out.append(None)
                continue
            for r in row:
                if r.error is not None:
                    raise _server_error(self.cfg.base_url, r)
            out.append([[Completion(text=ch.text, finish_reason=normalize_finish(ch.finish_reason), n_tokens=ch.n_tokens)
                         for ch in r.choices] for r in row])
        return out


def _server_error(base_url: str, r: ChatResult) -> PrefdataError:
    if r.kind in ("connection", "not_sent"):
        return PrefdataError(f"cannot reach the server at {base_url}: {r.error}; check --base-url and that the server is up")
    if r.status == 401:
        return PrefdataError(f"the server at {base_url} refused the API key; set it in the environment variable named by --api-key-env")
    if r.status == 404:
        return PrefdataError(f"the server at {base_url} answered 404: {r.error}; check --model (the served model name) and --base-url")
    if r.status is not None:
        return PrefdataError(f"the server at {base_url} answered {r.status}: {r.error}")
    return PrefdataError(f"request to {base_url} failed after retries: {r.error}")
