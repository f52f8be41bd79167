"""Any OpenAI-compatible chat completions server (vLLM serve, hosted APIs).

Async with bounded concurrency; retries with exponential backoff and jitter on 429, 5xx, timeouts and
dropped connections. The API key is read from the environment variable named in the config and is never
written anywhere (run.json records only the variable's name).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.samplers import Completion, SampleSpec, normalize_finish


class PromptTooLong(Exception):
    pass


def is_retryable(e: BaseException) -> bool:
    import openai

    if isinstance(e, openai.APITimeoutError | openai.APIConnectionError | openai.RateLimitError):
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code == 429 or e.status_code >= 500
    return isinstance(e, asyncio.TimeoutError)


def is_context_error(e: BaseException) -> bool:
    import openai

    if not isinstance(e, openai.BadRequestError):
        return False
    msg = str(e).lower()
    return any(s in msg for s in ("context length", "maximum context", "too long", "max_model_len", "context window"))


class OpenAISampler:
    name = "openai"

    def __init__(self, cfg: Any):
        import openai

        if not cfg.base_url:
            raise PrefdataError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if not cfg.model:
            raise PrefdataError("--backend openai needs --model, the model name the server serves")
        self.cfg = cfg
        key = os.environ.get(cfg.api_key_env) or "EMPTY"
        self._client_args = {"base_url": cfg.base_url, "api_key": key, "max_retries": 0, "timeout": cfg.timeout}
        self._openai = openai
        self.tokenizer = None

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int | None:
        return None  # the server decides; an over-long prompt comes back as a 400 and is skipped

    async def _one(self, client: Any, sem: asyncio.Semaphore, messages: list[dict[str, str]], spec: SampleSpec) -> list[Completion]:
        c = self.cfg
        body: dict[str, Any] = {
            "model": c.model,
            "messages": messages,
            "n": spec.n,
            "temperature": spec.temperature,
            "max_tokens": c.max_tokens,
        }
        if spec.temperature > 0 and c.top_p < 1.0:
            body["top_p"] = c.top_p
        if c.stop:
            body["stop"] = list(c.stop)
        extra: dict[str, Any] = {}
        if c.top_k and spec.temperature > 0:
            extra["top_k"] = c.top_k
        if c.min_p and spec.temperature > 0:
            extra["min_p"] = c.min_p
        if c.repetition_penalty != 1.0:
            extra["repetition_penalty"] = c.repetition_penalty
        if c.server_token_ids:
            extra["return_token_ids"] = True  # vLLM: exact completion token counts per choice
        if extra:
            body["extra_body"] = extra
        delay = 1.0
        for attempt in range(c.max_retries + 1):
            try:
                async with sem:
                    resp = await client.chat.completions.create(**body)
                break
            except Exception as e:  # noqa: BLE001 - classified below
                if is_context_error(e):
                    raise PromptTooLong(str(e)) from e
                if not is_retryable(e) or attempt == c.max_retries:
                    raise
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 60.0)
        out = []
        for ch in sorted(resp.choices, key=lambda ch: ch.index):
            ids = getattr(ch, "token_ids", None)
            if ids is None and isinstance(getattr(ch, "model_extra", None), dict):
                ids = ch.model_extra.get("token_ids")
            n_tok = len(ids) if ids is not None else (resp.usage.completion_tokens if resp.usage and len(resp.choices) == 1 else None)
            out.append(Completion(text=ch.message.content or "", finish_reason=normalize_finish(ch.finish_reason), n_tokens=n_tok))
        return out

    async def _batch(self, conversations: list[list[dict[str, str]]], plan: list[SampleSpec],
                     on_done: Callable[[int, int], None] | None = None) -> list[Any]:
        client = self._openai.AsyncOpenAI(**self._client_args)
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(conv: list[dict[str, str]], spec: SampleSpec) -> list[Completion]:
            got = await self._one(client, sem, conv, spec)
            if on_done is not None:
                on_done(len(got), sum(c.n_tokens or 0 for c in got))
            return got

        try:
            tasks = [one(conv, spec) for conv in conversations for spec in plan]
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.close()

    def sample(self, conversations: list[list[dict[str, str]]], plan: list[SampleSpec],
               on_done: Callable[[int, int], None] | None = None) -> list[list[list[Completion]] | None]:
        """out[prompt][plan entry]; None for a prompt the server refused as too long. `on_done` per request."""
        results = asyncio.run(self._batch(conversations, plan, on_done))
        out: list[list[list[Completion]] | None] = []
        for i in range(len(conversations)):
            row = results[i * len(plan) : (i + 1) * len(plan)]
            if any(isinstance(r, PromptTooLong) for r in row):
                out.append(None)
                continue
            for r in row:
                if isinstance(r, BaseException):
                    raise _server_error(self.cfg.base_url, r)
            out.append(row)  # type: ignore[arg-type]
        return out


def _server_error(base_url: str, e: BaseException) -> PrefdataError:
    import openai

    if isinstance(e, openai.APIConnectionError):
        return PrefdataError(f"cannot reach the server at {base_url}: {e}; check --base-url and that the server is up")
    if isinstance(e, openai.AuthenticationError):
        return PrefdataError(f"the server at {base_url} refused the API key; set it in the environment variable named by --api-key-env")
    if isinstance(e, openai.NotFoundError):
        return PrefdataError(f"the server at {base_url} answered 404: {e}; check --model (the served model name) and --base-url")
    if isinstance(e, openai.APIStatusError):
        return PrefdataError(f"the server at {base_url} answered {e.status_code}: {e.message}")
    return PrefdataError(f"request to {base_url} failed after retries: {type(e).__name__}: {e}")
