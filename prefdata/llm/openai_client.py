"""The one OpenAI-compatible chat client (vLLM serve, hosted APIs), used by the openai sampler and the LLM judge.

It speaks the chat-completions JSON itself over `http1` (keep-alive HTTP/1.1 on asyncio), on one event loop that
lives in a background thread for the client's life: connections stay open from one `chat` call to the next, and
calls submitted from several threads (`submit`) share the `concurrency` slots, so the caller can hand in the next
batch while the last one drains and the pipe stays full. Retrying is decided here, the same way for sampling and
judging:
- several base URLs, taken in turn per call and per retry (a retry goes to the next URL);
- bounded concurrency (`concurrency` calls in flight) and an optional requests-per-minute limit over all URLs;
- retried with exponential backoff and jitter, waiting at least what a `Retry-After` header asks for:
  connection errors, timeouts, 408/409/429/5xx, and replies that are not a valid chat completion (garbage
  JSON, no choices). Other 4xx answers (a bad request will not get better) fail at once;
- every failure is returned as a value (`ChatResult.error`, with its `kind`), never raised, so a judge can
  record it and a sampler can turn it into one clear error;
- an endpoint that stays unreachable is not retried forever: after `unreachable_after` connection failures in
  a row (across all calls and URLs; any answer from a server resets the count) the client marks itself
  `unavailable`, every call still queued fails at once without being sent, and the caller stops;
- when `preflight()` learned the served model's context (vLLM lists `max_model_len` in /v1/models), each
  conversation is first counted with the server's own tokenizer (vLLM's POST /tokenize); one whose prompt
  plus max_tokens does not fit fails alone as too_long without being sent. A server's context-length refusal
  (HTTP 400) is recorded as too_long too;
- every reply is read under the request's byte cap (`reply_cap`, from max_tokens: a well-behaved server stays far
  below it; an oversized reply fails at once as too_large, never retried), and the API key and the Hugging Face
  token are masked in its bytes before anything reads them, so a server that echoes the Authorization header
  cannot get them into judgments, candidates, errors or logs.

Why not the `openai` SDK over httpx (this client until issue 24): against an instant server at 64 calls in flight it
cost 6-23 ms of CPU per call, most of it in httpcore's connection pool (it polls every connection for every request)
and the rest in the SDK's request building; this one costs well under a millisecond (bench/RESULTS.md section 11).
The reply JSON is read as plain dicts, so vLLM's extra fields (`token_ids`, `max_model_len`) and a malformed 200
are handled explicitly, as before (a completion's choices and its byte cap: `completion`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prefdata.errors import PrefdataError
from prefdata.llm import flight
from prefdata.llm.completion import REPLY_BASE_BYTES, REPLY_CAP_NO_LIMIT, Choice, parse_completion, reply_cap
from prefdata.llm.context import TOO_LONG, too_long_reason
from prefdata.llm.http1 import Origin, Reply, ReplyTooLarge, TransportError
from prefdata.secrets import byte_forms, known_secrets, mask_bytes, mask_known

TOO_LARGE = "too_large"  # error prefix of a reply over its byte cap (see `reply_cap`)
TEMPLATE_SLACK = 8  # tokens per message on top of the measured template overhead (a tokenizer's word-start marker ...)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
CONTEXT_PHRASES = ("context length", "maximum context", "too long", "max_model_len", "context window")
_JSON = json.JSONEncoder(separators=(",", ":"))


@dataclass
class ChatResult:
    """The answer to one call: its choices, or an error string and its kind."""

    choices: list[Choice] = field(default_factory=list)
    error: str | None = None
    kind: str | None = None  # too_long, too_large, connection, not_sent, status, bad_response, timeout
    status: int | None = None
    url: str = ""
    latency_s: float = 0.0
    attempts: int = 1


class ChatClient:
    """Chat completions against one or more OpenAI-compatible base URLs (see the module docstring)."""

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
        what: str = "server",
    ) -> None:
        if not base_urls:
            raise PrefdataError(f"the {what} needs at least one --base-url")
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.model = model
        self.api_key = os.environ.get(api_key_env) or None  # never stored in run.json
        self.secrets = known_secrets(self.api_key)  # masked in every response before it is read (see _request)
        self.concurrency = max(1, concurrency)
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        self.rpm = requests_per_minute
        self.timeout_s = timeout_s
        self.what = what
        self._rr = 0
        self._next_start = 0.0
        if unreachable_after < 1:
            raise PrefdataError(f"--unreachable-after must be at least 1, got {unreachable_after}")
        self.unreachable_after = unreachable_after
        self._conn_failures = 0  # connection failures in a row, over all calls
        self._conn_timeouts = 0  # how many of them were connect timeouts (the rest were refused)
        self.unavailable: str | None = None  # why the endpoints count as down (then nothing more is sent)
        self.max_model_len: int | None = None  # the served model's context, when /models reports it
        self._can_tokenize = True  # the server has vLLM's /tokenize (cleared on the first 404)
        self._overheads: dict[tuple[str, ...], asyncio.Future[int | None]] = {}  # per sequence of roles (_too_long)
        self._secret_bytes = byte_forms(self.secrets)
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # started on first use (see _ready)
        self._thread: threading.Thread | None = None  # the loop's thread
        self._pid = 0
        self._origins: dict[str, Origin] = {}
        self.flight = flight.Flight(self.concurrency)
        if flight.FLIGHTS is not None:
            flight.FLIGHTS.append(self.flight)

    def _headers(self) -> dict[str, str]:
        # identity: the cap counts the bytes as sent (a compressed reply is decoded under the same cap anyway)
        h = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {**h, "Content-Type": "application/json", "Accept": "application/json", "Accept-Encoding": "identity",
                "User-Agent": "prefdata"}

    # -- the event loop and its connections ---------------------------------------------------------------------
    def _ready(self) -> asyncio.AbstractEventLoop:
        """The client's event loop, started on first use in a daemon thread (again in a forked child)."""
        if self._loop is None or self._pid != os.getpid():
            with self._start_lock:
                if self._loop is None or self._pid != os.getpid():
                    loop = asyncio.new_event_loop()
                    self._thread = threading.Thread(target=_serve, args=(loop,), name="prefdata-chat-client", daemon=True)
                    self._thread.start()
                    self._origins = {}
                    self._overheads = {}
                    # a client dropped without close() still stops its thread and closes its connections
                    self._stop = weakref.finalize(self, _shutdown, loop, self._origins)
                    self._sem = asyncio.Semaphore(self.concurrency)
                    self._rate_lock = asyncio.Lock()
                    self._loop, self._pid = loop, os.getpid()
        return self._loop

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self._ready())
        try:
            return fut.result(timeout)
        except BaseException:  # Ctrl-C (or a timeout) here: the calls in flight are cancelled, not left running
            fut.cancel()
            raise

    def close(self) -> None:
        """Close the connections and stop the loop (a later call starts them again)."""
        if self._loop is not None and self._pid == os.getpid():
            self._stop()
            if self._thread is not None and threading.current_thread() is not self._thread:
                self._thread.join(5.0)  # calls still in flight (Ctrl-C) end cancelled before the process moves on
        self._loop = None

    def _target(self, url: str, tail: str) -> tuple[Origin, str]:
        """The connections to `url`'s host and the path of `tail` under it (loop thread only)."""
        u = urlsplit(url)
        key = f"{u.scheme}://{u.netloc}"
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = Origin(url, self._headers(), self.timeout_s, proxy=_proxy_for(u.scheme, u.hostname))
        return origin, u.path.rstrip("/") + tail

    async def _request(self, url: str, tail: str, method: str, payload: bytes | None, cap: int) -> Reply:
        origin, path = self._target(url, tail)
        reply = await origin.request(method, path, payload, cap)
        reply.body = mask_bytes(reply.body, self._secret_bytes)
        return reply

    # -- the public calls ---------------------------------------------------------------------------------------
    def preflight(self) -> list[str]:
        """Check every URL answers /models; pick the first served model when none was named."""
        served: list[str] = []
        lens: list[int] = []
        for url in self.base_urls:
            try:
                models = self._run(self._models(url), timeout=30.0)
            except (TransportError, ReplyTooLarge, ValueError, KeyError, TypeError, AttributeError) as e:
                why = self.mask(f"{getattr(e, 'name', type(e).__name__)}: {e}")  # an error body may echo the headers
                raise PrefdataError(f"cannot reach the {self.what} at {url} ({why}); start it or fix --base-url") from None
            ids = [self.mask(str(m["id"])) for m in models]
            if self.model is not None and ids and self.model not in ids:
                raise PrefdataError(f"{self.what} {url} does not serve model {self.model!r} (it serves {', '.join(ids)})")
            served.extend(i for i in ids if i not in served)
            for m in models:
                n = m.get("max_model_len")
                if m["id"] == (self.model or ids[0]) and isinstance(n, int):
                    lens.append(n)
        if self.model is None:
            if not served:
                raise PrefdataError(f"{self.what} {self.base_urls[0]} lists no models; pass --judge-model")
            self.model = served[0]
        self.max_model_len = min(lens) if lens else None
        return served

    async def _models(self, url: str) -> list[dict[str, Any]]:
        r = await self._request(url, "/models", "GET", None, REPLY_CAP_NO_LIMIT)
        if r.status >= 400:
            raise ValueError(f"HTTP {r.status}: {r.body[:200].decode('utf-8', 'replace')}")
        data = json.loads(r.body)["data"]
        if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
            raise ValueError(f"not a model list: {r.body[:120]!r}")
        return data

    def chat(self, bodies: list[dict[str, Any]], on_done: Callable[[ChatResult], None] | None = None) -> list[ChatResult]:
        """One result per request body (in order). A body holds `messages` and the sampling parameters;
        `model` defaults to the client's. `on_done(result)` is called as each call finishes (from the client's
        thread)."""
        if not bodies:
            return []
        return self._run(self._chat_all(bodies, on_done))

    def submit(self, bodies: list[dict[str, Any]], on_done: Callable[[ChatResult], None] | None = None
               ) -> concurrent.futures.Future[list[ChatResult]]:  # fmt: skip
        """`chat` without waiting: its results later. Batches submitted together share the concurrency."""
        return asyncio.run_coroutine_threadsafe(self._chat_all(bodies, on_done), self._ready())

    async def _chat_all(self, bodies: list[dict[str, Any]], on_done: Callable[[ChatResult], None] | None) -> list[ChatResult]:
        return list(await asyncio.gather(*(self._call(b, on_done) for b in bodies)))

    async def _call(self, body: dict[str, Any], on_done: Callable[[ChatResult], None] | None) -> ChatResult:
        async with self._sem:
            self.flight.start()
            try:
                res = self._masked(await self._one(body))
            finally:
                self.flight.end()
        if on_done is not None:
            on_done(res)
        return res

    def mask(self, text: str) -> str:
        """`text` with the API key and the Hugging Face token masked."""
        return mask_known(text, self.secrets) if self.secrets else text

    def _masked(self, res: ChatResult) -> ChatResult:
        """The result as recorded: the bytes were masked; this masks what JSON escapes hid from that."""
        if not self.secrets:
            return res
        if res.error is not None:
            res.error = self.mask(res.error)
        for ch in res.choices:
            ch.text = self.mask(ch.text)
            if ch.top_logprobs:
                ch.top_logprobs = {self.mask(t): v for t, v in ch.top_logprobs.items()}
        return res

    def _unreachable(self) -> str:
        """Why the endpoints count as down, naming what happened: refused connections, timeouts, or both."""
        n, slow = self._conn_failures, self._conn_timeouts
        where = f"the {self.what} ({', '.join(self.base_urls)})"
        if slow == 0:
            return f"{where} refused {n} connections in a row"
        if slow == n:
            return f"{where} did not accept a connection within {self.timeout_s:g}s, {n} times in a row"
        return f"{where} failed {n} connections in a row ({n - slow} refused, {slow} timed out after {self.timeout_s:g}s)"

    async def _wait_rate(self) -> None:
        if not self.rpm:
            return
        async with self._rate_lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + 60.0 / self.rpm
        if start > now:
            await asyncio.sleep(start - now)

    async def _one(self, body: dict[str, Any]) -> ChatResult:
        body = {"model": self.model, **body}
        payload = _JSON.encode(body).encode()
        cap = reply_cap(body)
        k = self._rr
        self._rr += 1
        t0 = time.monotonic()
        url = self.base_urls[k % len(self.base_urls)]
        too_long = await self._too_long(url, body)
        if too_long:
            return ChatResult(error=too_long, kind=TOO_LONG, url=url, latency_s=time.monotonic() - t0, attempts=0)
        last, kind, status = "no attempt", "connection", None
        for attempt in range(self.max_retries + 1):
            if self.unavailable is not None:
                return ChatResult(error=f"not sent: {self.unavailable}", kind="not_sent", url=url,
                                  latency_s=time.monotonic() - t0, attempts=attempt)
            url = self.base_urls[(k + attempt) % len(self.base_urls)]
            await self._wait_rate()
            retry_after = 0.0
            try:
                r = await self._request(url, "/chat/completions", "POST", payload, cap)
            except ReplyTooLarge as e:  # the same request gets the same reply: not retried
                self._conn_failures = self._conn_timeouts = 0
                return ChatResult(error=f"{TOO_LARGE}: {e}", kind=TOO_LARGE, status=e.status, url=url,
                                  latency_s=time.monotonic() - t0, attempts=attempt + 1)
            except TransportError as e:
                status = None
                if e.timeout:
                    last, kind = f"timed out after {self.timeout_s:g}s ({e.name}) at {url}", "timeout"
                else:
                    last, kind = f"{e.name} from {url}: {e}", "connection"
                if e.connect:  # nothing answered: count it
                    self._conn_failures += 1
                    self._conn_timeouts += e.timeout
                    if self._conn_failures >= self.unreachable_after and self.unavailable is None:
                        self.unavailable = self._unreachable()
            else:
                self._conn_failures = self._conn_timeouts = 0
                if 200 <= r.status < 300:
                    try:
                        choices = parse_completion(r.body)
                        return ChatResult(choices=choices, url=url, latency_s=time.monotonic() - t0, attempts=attempt + 1)
                    except ValueError as e:  # not JSON, or not a chat completion
                        last, kind, status = f"bad response from {url}: {e}", "bad_response", None
                else:
                    text = r.body.decode("utf-8", "replace")
                    last, kind, status = f"HTTP {r.status} from {url}: {text[:200]}", "status", r.status
                    if r.status == 400 and any(p in text.lower() for p in CONTEXT_PHRASES):
                        return ChatResult(error=f"{TOO_LONG}: the {self.what} refused it: {text[:200]}", kind=TOO_LONG,
                                          status=400, url=url, latency_s=time.monotonic() - t0, attempts=attempt + 1)
                    if r.status not in RETRY_STATUS:
                        return ChatResult(error=last, kind=kind, status=status, url=url, latency_s=time.monotonic() - t0,
                                          attempts=attempt + 1)
                    retry_after = _retry_after(r.headers)
            if attempt < self.max_retries:
                delay = max(retry_after, self.backoff_s * (2**attempt)) * (1 + 0.25 * random.random())
                await asyncio.sleep(min(delay, 60.0))
        return ChatResult(error=f"gave up after {self.max_retries + 1} attempts: {last}", kind=kind, status=status,
                          url=url, latency_s=time.monotonic() - t0, attempts=self.max_retries + 1)

    async def _too_long(self, url: str, body: dict[str, Any]) -> str | None:
        """too_long's reason when the server's tokenizer says the call does not fit its context; else None.

        A call that fits for sure is not counted: a token holds at least one byte of text, so the prompt has at most
        its contents' UTF-8 bytes plus what the chat template adds around them, which is measured once per sequence
        of roles (the same roles with one-letter contents) and padded. Only calls near the context are counted, one
        extra request each; a server's own context refusal is still recognised for the rare text that escapes."""
        if not self.max_model_len or not self._can_tokenize or self.unavailable is not None:
            return None
        max_tokens = int(body.get("max_tokens") or 0)
        msgs = body["messages"]
        overhead = await self._overhead(url, body["model"], tuple(m.get("role", "") for m in msgs))
        if overhead is not None:
            content = sum(len(c.encode()) if isinstance(c := m.get("content"), str) else len(json.dumps(c)) for m in msgs)
            if overhead + content + TEMPLATE_SLACK * len(msgs) + max_tokens <= self.max_model_len:
                return None
        n = await self._count(url, body["model"], msgs)
        return None if n is None else too_long_reason(n, max_tokens, self.max_model_len)

    async def _count(self, url: str, model: Any, messages: list[dict[str, Any]]) -> int | None:
        """The server's token count of a conversation (vLLM's POST /tokenize), or None when there is none."""
        root = url[: -len("/v1")] if url.endswith("/v1") else url
        req = {"model": model, "messages": messages, "add_generation_prompt": True}
        try:
            r = await self._request(root, "/tokenize", "POST", _JSON.encode(req).encode(), REPLY_BASE_BYTES)
            if r.status == 404:
                self._can_tokenize = False
                return None
            return int(json.loads(r.body)["count"])
        except (TransportError, ReplyTooLarge, ValueError, KeyError, TypeError):
            return None  # no count: the request is sent, and a refusal is still recognised

    async def _overhead(self, url: str, model: Any, roles: tuple[str, ...]) -> int | None:
        """The tokens of a conversation with these roles and one-letter contents (at least the template's own), counted
        once per sequence of roles; None when the server did not count it."""
        fut = self._overheads.get(roles)
        if fut is None:
            fut = self._overheads[roles] = asyncio.get_running_loop().create_future()
            n = None
            try:
                n = await self._count(url, model, [{"role": r, "content": "x"} for r in roles])
            finally:  # also when cancelled: the calls waiting on it go on
                fut.set_result(n)
                if n is None:
                    self._overheads.pop(roles, None)  # asked again by a later call
        return await asyncio.shield(fut)


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return min(float(headers.get("retry-after", 0)), 30.0)
    except ValueError:
        return 0.0


def _proxy_for(scheme: str, host: str | None) -> str | None:
    """The proxy the environment names for this URL (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), as httpx read it."""
    import urllib.request

    if not host or urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(scheme) or proxies.get("all")


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_forever()
    loop.close()


def _shutdown(loop: asyncio.AbstractEventLoop, origins: dict[str, Origin]) -> None:
    """Cancel the calls still in flight, let them unwind, close the connections and stop the loop, from any thread
    (it must not hold the client). Stopping with calls pending would close their sockets after the loop is
    closed: 'Event loop is closed' tracebacks at exit (an interrupted stage)."""

    async def drain() -> None:
        tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for o in origins.values():
            o.close()
        loop.stop()

    def start() -> None:
        task = loop.create_task(drain())
        _DRAINING.add(task)  # the loop holds tasks weakly
        task.add_done_callback(_DRAINING.discard)

    with contextlib.suppress(RuntimeError):  # the loop is already closed
        loop.call_soon_threadsafe(start)


_DRAINING: set[asyncio.Task[None]] = set()
