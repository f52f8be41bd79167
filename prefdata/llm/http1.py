"""A small HTTP/1.1 client on asyncio streams: keep-alive connections per origin, every reply read under a byte cap.

Why not httpx (and the `openai` SDK over it, which the chat client used before issue 24): profiled against an
instant server at 64 calls in flight, httpcore's pool scans every connection (a `poll` syscall each) for every
request it assigns, so its cost grows with the concurrency; with the SDK's request building on top, the client
spent 6-20 ms of CPU per judge call. This one keeps a stack of idle connections per origin, so a call costs
one write and a few reads (bench/RESULTS.md section 11).

What it speaks: GET and POST with a byte body; replies framed by Content-Length, chunked, or the connection's end;
gzip/deflate bodies decoded (we ask for identity); http:// and https:// (SSL_CERT_FILE / SSL_CERT_DIR, else certifi); an
http:// proxy (the chat client takes it from HTTP_PROXY / HTTPS_PROXY / NO_PROXY, as httpx did): plain requests in
absolute form, https through a CONNECT tunnel. A reused connection the server closed meanwhile is replaced once,
transparently (no byte of a reply was read). Not supported: redirects (a 3xx is an answer), HTTP/2, socks proxies.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

MAX_HEAD = 64 * 1024  # status line and headers


class TransportError(Exception):
    """No usable reply: `name` says what failed (ConnectError, ConnectTimeout, ReadTimeout, ReadError,
    RemoteProtocolError), as httpx named them, so recorded errors keep their words."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name

    @property
    def connect(self) -> bool:
        """Nothing answered: no connection was made."""
        return self.name in ("ConnectError", "ConnectTimeout")

    @property
    def timeout(self) -> bool:
        return self.name.endswith("Timeout")


class ReplyTooLarge(Exception):
    """A reply longer than its request's byte cap: reading stopped there (the connection is dropped)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case (a repeated header: the last one)
    body: bytes


class _Conn:
    __slots__ = ("r", "w")

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    def usable(self) -> bool:
        return not self.r.at_eof() and not self.w.is_closing() and not self.r._buffer  # type: ignore[attr-defined]

    def close(self) -> None:
        self.w.close()


_SSL: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def _ssl_context() -> ssl.SSLContext:
    """Verifying TLS: the roots in SSL_CERT_FILE / SSL_CERT_DIR when set (as httpx read them), else certifi's when
    installed, else the system's."""
    key = (os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None)
    ctx = _SSL.get(key)
    if ctx is None:
        if any(key):
            ctx = ssl.create_default_context(cafile=key[0], capath=key[1])
        else:
            try:
                import certifi

                ctx = ssl.create_default_context(cafile=certifi.where())
            except ImportError:
                ctx = ssl.create_default_context()
        _SSL[key] = ctx
    return ctx


class Origin:
    """Keep-alive connections to one scheme://host:port, used by one event loop. The caller bounds how many
    requests run at once (the chat client's semaphore), so the idle stack never holds more than that."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, proxy: str | None = None) -> None:
        u = urlsplit(url)
        self.invalid: str | None = None  # why nothing can be sent (a connection error on every call)
        if u.scheme not in ("http", "https") or not u.hostname:
            self.invalid = f"not an http(s) URL: {url}"
        self.host = u.hostname or ""
        self.tls = u.scheme == "https"
        self.port = u.port or (443 if self.tls else 80)
        default = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default else f"{host}:{self.port}"
        self.timeout_s = timeout_s
        self.idle: list[_Conn] = []
        # through an HTTP proxy: plain http in absolute form, https in a CONNECT tunnel
        self.proxy: tuple[str, int] | None = None
        self.prefix = ""
        if proxy:
            p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if p.scheme != "http" or not p.hostname:
                self.invalid = f"only http:// proxies are supported, the environment names {p.scheme}://{p.hostname}"
            self.proxy = (p.hostname or "", p.port or 80)
            if p.username:
                token = base64.b64encode(f"{unquote(p.username)}:{unquote(p.password or '')}".encode()).decode()
                headers = {**headers, "Proxy-Authorization": f"Basic {token}"}
            if not self.tls:
                self.prefix = f"http://{self.host_header}"
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if self.prefix or k != "Proxy-Authorization")
        self.tunnel_auth = headers.get("Proxy-Authorization") if self.proxy and self.tls else None

    async def _connect(self) -> _Conn:
        if self.invalid:
            raise TransportError("ConnectError", self.invalid)
        host, port = self.proxy or (self.host, self.port)
        try:
            async with asyncio.timeout(self.timeout_s):
                tls = _ssl_context() if self.tls and not self.proxy else None
                r, w = await asyncio.open_connection(host, port, ssl=tls, limit=MAX_HEAD)
                if self.proxy and self.tls:
                    auth = f"Proxy-Authorization: {self.tunnel_auth}\r\n" if self.tunnel_auth else ""
                    w.write(f"CONNECT {self.host_header} HTTP/1.1\r\nHost: {self.host_header}\r\n{auth}\r\n".encode("latin-1"))
                    reply, _, _, _ = _parse_head(await r.readuntil(b"\r\n\r\n"))
                    if reply.status != 200:
                        w.close()
                        raise TransportError("ConnectError", f"the proxy {host}:{port} refused the tunnel (HTTP {reply.status})")
                    await w.start_tls(_ssl_context(), server_hostname=self.host)
        except TimeoutError:
            raise TransportError("ConnectTimeout", f"no connection to {host}:{port} within {self.timeout_s:g}s") from None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise TransportError("ConnectError", str(e) or type(e).__name__) from None
        return _Conn(r, w)

    async def request(self, method: str, path: str, body: bytes | None, cap: int) -> Reply:
        """One request on an idle connection (or a new one); the reply's body at most `cap` bytes."""
        head = (f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n{self.extra}"
                f"Content-Length: {len(body or b'')}\r\n\r\n").encode("latin-1")
        data = head + body if body else head
        while self.idle:
            conn = self.idle.pop()
            if not conn.usable():
                conn.close()
                continue
            try:
                return await self._timed(conn, data, cap, reused=True)
            except _Stale:
                conn.close()
        conn = await self._connect()
        try:
            return await self._timed(conn, data, cap, reused=False)
        except _Stale:
            raise TransportError("RemoteProtocolError", "the server closed the connection without a reply") from None

    async def _timed(self, conn: _Conn, data: bytes, cap: int, *, reused: bool) -> Reply:
        """The exchange, within the timeout (the connection's own timeout is _connect's)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._exchange(conn, data, cap, reused=reused)
        except TimeoutError:
            conn.close()
            raise TransportError("ReadTimeout", f"no reply within {self.timeout_s:g}s") from None

    async def _exchange(self, conn: _Conn, data: bytes, cap: int, *, reused: bool) -> Reply:
        keep = ok = False
        try:
            r = conn.r
            conn.w.write(data)
            try:
                await conn.w.drain()
                raw = await r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                if reused and not getattr(e, "partial", b""):
                    raise _Stale from None
                raise TransportError("RemoteProtocolError", "the server closed the connection mid-reply") from None
            reply, keep, length, chunked = _parse_head(raw)
            if length is not None and length > cap:
                raise ReplyTooLarge(f"the reply has {length} bytes, more than the {cap} that max_tokens allows", reply.status)
            if reply.status in (204, 304) or 100 <= reply.status < 200:
                body = b""
            elif length is not None:
                body = await r.readexactly(length)
            elif chunked:
                body = await _read_chunked(r, cap, reply.status)
            else:  # the body ends with the connection
                keep = False
                buf = bytearray()
                while chunk := await r.read(65536):
                    buf += chunk
                    if len(buf) > cap:
                        raise _too_long(cap, reply.status)
                body = bytes(buf)
            enc = reply.headers.get("content-encoding", "identity").strip().lower()
            if enc in ("gzip", "deflate", "x-gzip"):
                d = zlib.decompressobj(47)  # gzip or zlib header, detected
                body = d.decompress(body, cap + 1)
                if len(body) > cap or d.unconsumed_tail:
                    raise _too_long(cap, reply.status)
            reply.body = body
            ok = True
            return reply
        except asyncio.IncompleteReadError:
            raise TransportError("RemoteProtocolError", "the server closed the connection mid-reply") from None
        except (asyncio.LimitOverrunError, ValueError) as e:
            raise TransportError("RemoteProtocolError", f"not an HTTP reply ({e})") from None
        except ConnectionError as e:
            raise TransportError("ReadError", str(e) or type(e).__name__) from None
        finally:
            if ok and keep:
                self.idle.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


class _Stale(Exception):
    """A reused connection was closed by the server before any byte of the reply: send again on a new one."""


def _too_long(cap: int, status: int) -> ReplyTooLarge:
    return ReplyTooLarge(f"the reply is longer than the {cap} bytes that max_tokens allows; read no further", status)


def _parse_head(raw: bytes) -> tuple[Reply, bool, int | None, bool]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
    conn = headers.get("connection", "").lower()
    keep = "close" not in conn if parts[0] != "HTTP/1.0" else "keep-alive" in conn
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    cl = headers.get("content-length")
    length = None
    if cl is not None and not chunked:
        if not cl.isdigit():
            raise ValueError(f"bad Content-Length {cl[:40]!r}")
        length = int(cl)
    return Reply(int(parts[1]), headers, b""), keep, length, chunked


async def _read_chunked(r: asyncio.StreamReader, cap: int, status: int) -> bytes:
    buf = bytearray()
    while True:
        size_line = await r.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while await r.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return bytes(buf)
        if len(buf) + size > cap:
            raise _too_long(cap, status)
        buf += await r.readexactly(size)
        await r.readexactly(2)
