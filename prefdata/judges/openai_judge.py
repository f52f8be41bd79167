"""Chat completions over one or more OpenAI-compatible servers: async, bounded, retried, rate-limited.

Requests are spread round-robin over the base URLs and a retry moves to the next URL, so one dead endpoint
slows a run down instead of failing it. Retried: connection errors, timeouts, 408/409/429/5xx, and replies
that are not a valid chat completion (garbage JSON, no choices). Other 4xx answers (a bad request will not
get better) fail at once. Every failure is returned as an error string, never raised, so the caller can
record it; nothing is capped silently.

An endpoint that stays unreachable is not retried forever: after `unreachable_after` connection failures in a
row (across all requests and URLs; any answer from a server resets the count) the backend marks itself
`unavailable`, every call still queued fails at once without being sent, and the caller stops the run.

When the server reports its context length (vLLM lists `max_model_len` in /v1/models), each conversation is
counted first with the server's own tokenizer (vLLM's POST /tokenize); one whose prompt plus max_tokens does
not fit fails alone as `too_long` without being sent. A server without /tokenize is asked anyway, and its
context-length refusal (HTTP 400) is recorded as `too_long` too.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import httpx

from prefdata.errors import PrefdataError
from prefdata.judges.llm_judge import TOO_LONG, ChatOut

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend:
    """A ChatBackend for `LLMPairJudge` (see llm_judge.py)."""

    def __init__(
        self,
        base_urls: list[str],
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        requests_per_minute: float | None = None,
        timeout_s: float = 120.0,
        unreachable_after: int = 8,
    ) -> None:
        if not base_urls:
            raise PrefdataError("the OpenAI judge needs at least one --base-url")
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.model = model
        self.api_key = os.environ.get(api_key_env) or None  # never stored in run.json
        self.concurrency = max(1, concurrency)
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        self.rpm = requests_per_minute
        self.timeout_s = timeout_s
        self._rr = 0
        self._next_start = 0.0
        self.unreachable_after = max(1, unreachable_after)
        self._conn_failures = 0  # connection failures in a row, over all requests
        self.unavailable: str | None = None  # why the endpoints count as down (then nothing more is sent)
        self.max_model_len: int | None = None  # the served model's context, when /models reports it
        self._can_tokenize = True  # the server has vLLM's /tokenize (cleared on the first 404)

    def config(self) -> dict[str, object]:
        """What changes verdicts (the model); URLs, concurrency and retries do not."""
        return {"backend": "openai", "model": self.model}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def preflight(self) -> list[str]:
        """Check every URL answers /models; pick the first served model when none was named."""
        served: list[str] = []
        lens: list[int] = []
        for url in self.base_urls:
            try:
                r = httpx.get(f"{url}/models", headers=self._headers(), timeout=10.0)
                r.raise_for_status()
                ids = [m["id"] for m in r.json().get("data", [])]
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise PrefdataError(
                    f"cannot reach the judge server at {url} ({type(e).__name__}: {e}); start it or fix --base-url"
                ) from e
            if self.model is not None and ids and self.model not in ids:
                raise PrefdataError(f"judge server {url} does not serve model {self.model!r} (it serves {', '.join(ids)})")
            served.extend(i for i in ids if i not in served)
            for m in r.json().get("data", []):
                if ids and m.get("id") == (self.model or ids[0]) and isinstance(m.get("max_model_len"), int):
                    lens.append(m["max_model_len"])
        if self.model is None:
            if not served:
                raise PrefdataError(f"judge server {self.base_urls[0]} lists no models; pass --judge-model")
            self.model = served[0]
        self.max_model_len = min(lens) if lens else None
        return served

    def chat(
        self, convs: list[list[dict[str, str]]], *, max_tokens: int, temperature: float, top_logprobs: int | None
    ) -> list[ChatOut]:
        if not convs:
            return []
        return asyncio.run(self._chat_all(convs, max_tokens, temperature, top_logprobs))

    async def _chat_all(
        self, convs: list[list[dict[str, str]]], max_tokens: int, temperature: float, top_logprobs: int | None
    ) -> list[ChatOut]:
        sem = asyncio.Semaphore(self.concurrency)
        lock = asyncio.Lock()
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits, headers=self._headers()) as client:

            async def one(conv: list[dict[str, str]]) -> ChatOut:
                async with sem:
                    return await self._one(client, lock, conv, max_tokens, temperature, top_logprobs)

            return list(await asyncio.gather(*(one(c) for c in convs)))

    async def _wait_rate(self, lock: asyncio.Lock) -> None:
        if not self.rpm:
            return
        async with lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + 60.0 / self.rpm
        if start > now:
            await asyncio.sleep(start - now)

    async def _one(
        self,
        client: httpx.AsyncClient,
        lock: asyncio.Lock,
        conv: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        top_logprobs: int | None,
    ) -> ChatOut:
        body: dict[str, Any] = {"model": self.model, "messages": conv, "max_tokens": max_tokens, "temperature": temperature}
        if top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        k = self._rr
        self._rr += 1
        t0 = time.monotonic()
        too_long = await self._too_long(client, self.base_urls[k % len(self.base_urls)], conv, max_tokens)
        if too_long:
            return ChatOut(error=too_long, latency_s=time.monotonic() - t0, attempts=0)
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if self.unavailable is not None:
                return ChatOut(error=f"not sent: {self.unavailable}", latency_s=time.monotonic() - t0, attempts=attempt)
            url = self.base_urls[(k + attempt) % len(self.base_urls)]
            await self._wait_rate(lock)
            retry_after = 0.0
            try:
                r = await client.post(f"{url}/chat/completions", json=body)
                self._conn_failures = 0
                if r.status_code >= 400:
                    last = f"HTTP {r.status_code} from {url}: {r.text[:200]}"
                    if r.status_code == 400 and "context length" in r.text.lower():
                        last = f"{TOO_LONG}: the server refused it: {r.text[:200]}"
                    if r.status_code not in RETRY_STATUS:
                        return ChatOut(error=last, latency_s=time.monotonic() - t0, attempts=attempt + 1)
                    retry_after = _retry_after(r)
                else:
                    text, tops = _parse_completion(r)
                    return ChatOut(text=text, top_logprobs=tops, latency_s=time.monotonic() - t0, attempts=attempt + 1)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                last = f"{type(e).__name__} from {url}: {e}"
                self._conn_failures += 1
                if self._conn_failures >= self.unreachable_after and self.unavailable is None:
                    where = ", ".join(self.base_urls)
                    self.unavailable = f"the judge server ({where}) refused {self._conn_failures} connections in a row"
            except httpx.HTTPError as e:
                last = f"{type(e).__name__} from {url}: {e}"
            except ValueError as e:  # not JSON, or not a chat completion
                last = f"bad response from {url}: {e}"
            if attempt < self.max_retries:
                delay = max(retry_after, self.backoff_s * (2**attempt)) * (1 + 0.25 * random.random())
                await asyncio.sleep(min(delay, 60.0))
        return ChatOut(error=f"gave up after {self.max_retries + 1} attempts: {last}", latency_s=time.monotonic() - t0,
                       attempts=self.max_retries + 1)


    async def _too_long(self, client: httpx.AsyncClient, url: str, conv: list[dict[str, str]], max_tokens: int) -> str | None:
        """too_long's reason when the server's tokenizer says the call does not fit its context; else None."""
        if not self.max_model_len or not self._can_tokenize or self.unavailable is not None:
            return None
        root = url[: -len("/v1")] if url.endswith("/v1") else url
        try:
            r = await client.post(f"{root}/tokenize", json={"model": self.model, "messages": conv, "add_generation_prompt": True})
            if r.status_code == 404:
                self._can_tokenize = False
                return None
            n = int(r.json()["count"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None  # no count: the request is sent, and a refusal is still recognised
        if n + max_tokens <= self.max_model_len:
            return None
        return (f"{TOO_LONG}: the judge prompt has {n} tokens and the reply up to {max_tokens}, more than the judge's "
                f"context of {self.max_model_len}")


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(float(r.headers.get("retry-after", 0)), 30.0)
    except ValueError:
        return 0.0


def _parse_completion(r: httpx.Response) -> tuple[str, dict[str, float] | None]:
    """Text and the first token's top log-probs of a chat completion; ValueError when it is not one."""
    try:
        data = r.json()
        choice = data["choices"][0]
        text = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"not a chat completion ({type(e).__name__}: {r.text[:120]!r})") from e
    if not isinstance(text, str):
        raise ValueError("message content is not a string")
    tops: dict[str, float] | None = None
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if content:
        tops = {}
        for t in content[0].get("top_logprobs") or []:
            tok, lp = t.get("token"), t.get("logprob")
            if isinstance(tok, str) and isinstance(lp, int | float):
                tops[tok] = max(tops.get(tok, -1e30), float(lp))
    return text, tops
