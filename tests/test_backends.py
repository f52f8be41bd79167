"""The one OpenAI-compatible client under both adapters: Retry-After, errors as values, the early stop."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prefdata.errors import PrefdataError
from prefdata.generate import GenerateConfig
from prefdata.generate.config import SampleSpec
from prefdata.generate.sampling import make_sampler
from prefdata.llm.openai_client import ChatClient
from tests.helpers import completion


class _Busy(BaseHTTPRequestHandler):
    """429 with Retry-After: 1 to the first request, then a completion; records when each request came."""

    times: list[float] = []

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).times.append(time.monotonic())
        if len(self.times) == 1:
            body, code = b'{"error": {"message": "slow down"}}', 429
        else:
            body, code = completion("hello"), 200
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_retry_after_is_honoured_and_the_answer_returned():
    _Busy.times = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = ChatClient([f"http://127.0.0.1:{srv.server_address[1]}/v1"], "m", backoff_s=0.0, max_retries=2)
        (r,) = client.chat([{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}])
        assert r.error is None and r.choices[0].text == "hello" and r.attempts == 2
        assert _Busy.times[1] - _Busy.times[0] >= 0.95  # waited what the server asked, not the 0 s backoff
    finally:
        srv.shutdown()


def test_client_returns_errors_as_values():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ChatClient([f"http://127.0.0.1:{port}/v1"], "m", backoff_s=0.0, max_retries=1, unreachable_after=3)
    out = client.chat([{"messages": [{"role": "user", "content": str(i)}]} for i in range(6)])
    assert all(r.error and r.kind in ("connection", "not_sent") for r in out)
    assert client.unavailable and "refused 3 connections in a row" in client.unavailable
    assert json.dumps([r.error for r in out])  # plain strings, recordable


def test_openai_sampler_stops_early_on_a_dead_server(tmp_path):
    """The sampler shares the judge's stop after repeated connection failures: no backoff for every request."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = GenerateConfig(model="m", backend="openai", base_url=f"http://127.0.0.1:{port}/v1", max_retries=6,
                         concurrency=4)
    sampler = make_sampler(cfg)
    t0 = time.monotonic()
    with pytest.raises(PrefdataError, match="cannot reach the server"):
        sampler.sample([[{"role": "user", "content": f"q{i}"}] for i in range(16)], [SampleSpec("sample", 2, 0.8)])
    assert time.monotonic() - t0 < 20.0  # without the stop: 6 retries with backoff (1+2+4+8+16+32 s) per request


class _Huge(BaseHTTPRequestHandler):
    """A 3 MB completion to every request: with its Content-Length, or (content "chunked") without one, the end of
    the body marked by closing the connection. Counts the requests."""

    posts = 0

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).posts += 1
        payload = completion("[[A]] " + "x" * 3_000_000)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if body["messages"][0]["content"] != "chunked":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:  # the client stopped reading: that is the point
            pass

    def log_message(self, *args):
        pass


def test_an_oversized_reply_fails_as_too_large_at_once_and_is_not_kept():
    """Before: 3 MB replies were accepted as verdicts (the judgments folder grew to 99 MB). The cap follows
    max_tokens; reading stops there, with or without a Content-Length, and the same request is not sent again."""
    _Huge.posts = 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Huge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = ChatClient([f"http://127.0.0.1:{srv.server_address[1]}/v1"], "m", backoff_s=0.0, max_retries=3)
        out = client.chat([{"messages": [{"role": "user", "content": c}], "max_tokens": 64} for c in ("declared", "chunked")])
    finally:
        srv.shutdown()
    for r in out:
        assert r.kind == "too_large" and r.error and r.error.startswith("too_large: the reply") and not r.choices
        assert "max_tokens" in r.error and len(r.error) < 300 and r.attempts == 1
    assert _Huge.posts == 2


def test_reply_cap_grows_with_max_tokens_n_and_logprobs():
    from prefdata.llm.completion import REPLY_CAP_NO_LIMIT, reply_cap

    base = reply_cap({"max_tokens": 512})
    assert 64 * 1024 < base < 3_000_000
    assert reply_cap({"max_tokens": 512, "n": 4}) > base and reply_cap({"max_tokens": 1024}) > base
    assert reply_cap({"max_tokens": 1, "logprobs": True, "top_logprobs": 20}) > reply_cap({"max_tokens": 1})
    assert reply_cap({}) == REPLY_CAP_NO_LIMIT


def test_timeouts_are_reported_as_timeouts():
    """Before: connect timeouts stopped the run as "refused 8 connections in a row", and a read timeout was
    recorded with the bare name of the httpx error. The connect timeout is real: a listening socket whose accept
    queue is full (nothing accepts) drops further connection attempts, as a firewalled port does."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(lsock.getsockname())
        fillers.append(f)
    time.sleep(0.2)
    try:
        client = ChatClient([f"http://127.0.0.1:{lsock.getsockname()[1]}/v1"], "m", max_retries=0, unreachable_after=3,
                            timeout_s=0.5)
        out = client.chat([{"messages": [{"role": "user", "content": str(i)}]} for i in range(4)])
    finally:
        for f in fillers:
            f.close()
        lsock.close()
    assert client.unavailable and "did not accept a connection within 0.5s, 3 times in a row" in client.unavailable
    assert "refused" not in client.unavailable
    assert all(r.kind in ("timeout", "not_sent") for r in out)
    assert sum("timed out after 0.5s (ConnectTimeout)" in (r.error or "") for r in out) >= 3

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            time.sleep(2)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = ChatClient([f"http://127.0.0.1:{srv.server_address[1]}/v1"], "m", max_retries=0, timeout_s=0.3)
        (r,) = client.chat([{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}])
    finally:
        srv.shutdown()
    assert r.kind == "timeout" and "timed out after 0.3s (ReadTimeout)" in (r.error or "") and not client.unavailable


def test_unreachable_after_below_one_is_refused():
    """Before: `--unreachable-after -1` (or 0) was silently taken as 1."""
    from prefdata.rank import RankConfig

    for bad in (0, -1):
        with pytest.raises(PrefdataError, match="--unreachable-after"):
            RankConfig(unreachable_after=bad)
        with pytest.raises(PrefdataError, match="--unreachable-after"):
            ChatClient(["http://127.0.0.1:9/v1"], "m", unreachable_after=bad)


class _Forward(BaseHTTPRequestHandler):
    """A forward HTTP proxy: takes absolute-form requests and relays them; records the targets and auth it saw."""

    seen: list[tuple[str, str | None]] = []

    def do_POST(self):  # noqa: N802 - http.server API
        import http.client
        from urllib.parse import urlsplit

        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.path, self.headers.get("Proxy-Authorization")))
        u = urlsplit(self.path)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "connection")}
        conn.request("POST", u.path, body, headers)
        r = conn.getresponse()
        payload = r.read()
        self.send_response(r.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_CONNECT(self):  # noqa: N802 - http.server API: a tunnel, the bytes relayed both ways
        host, port = self.path.rsplit(":", 1)
        type(self).seen.append((f"CONNECT {self.path}", self.headers.get("Proxy-Authorization")))
        upstream = socket.create_connection((host, int(port)))
        self.send_response(200, "Connection established")
        self.end_headers()

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                dst.close()

        threading.Thread(target=pipe, args=(upstream, self.connection), daemon=True).start()
        pipe(self.connection, upstream)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_http_proxy_from_the_environment_is_used_and_no_proxy_bypasses_it(monkeypatch):
    """httpx (under the SDK, before issue 24) went through HTTP_PROXY; the client's own transport does too."""
    from tests.helpers import FaultServer

    target = FaultServer()
    target.healthy = True
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    _Forward.seen = []
    body = {"messages": [{"role": "user", "content": "answer q=1 or answer q=5"}], "max_tokens": 8}
    try:
        for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.server_address[1]}")
        (r,) = ChatClient([target.url], "fake-judge", max_retries=0).chat([body])
        assert r.error is None and r.choices[0].text == "[[B]]"
        assert len(_Forward.seen) == 1 and _Forward.seen[0][0] == f"{target.url}/chat/completions"
        assert _Forward.seen[0][1] == "Basic dXNlcjpwQHNz"  # user:p@ss
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        (r,) = ChatClient([target.url], "fake-judge", max_retries=0).chat([body])
        assert r.error is None and len(_Forward.seen) == 1  # straight to the server
    finally:
        proxy.shutdown()
        target.close()


def test_https_with_the_roots_named_by_ssl_cert_file(tmp_path, monkeypatch):
    """A real TLS server on 127.0.0.1 with a certificate made here: trusted through SSL_CERT_FILE (as httpx did), and
    refused as a connection error when the roots do not include it."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    _Busy.times = [0.0]  # past the first request: _Busy answers with a completion
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    url = f"https://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "SSL_CERT_DIR"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        (r,) = ChatClient([url], "m", max_retries=0).chat([body])
        assert r.error is None and r.choices[0].text == "hello"
        # through an HTTPS_PROXY: a CONNECT tunnel, TLS end to end
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
        proxy.daemon_threads = True
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        _Forward.seen = []
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        try:
            (r,) = ChatClient([url], "m", max_retries=0).chat([body])
        finally:
            proxy.shutdown()
            monkeypatch.delenv("HTTPS_PROXY")
        assert r.error is None and r.choices[0].text == "hello"
        assert _Forward.seen == [(f"CONNECT 127.0.0.1:{srv.server_address[1]}", None)]
        monkeypatch.delenv("SSL_CERT_FILE")
        (r,) = ChatClient([url], "m", max_retries=0).chat([body])
        assert r.kind == "connection" and "CERTIFICATE_VERIFY_FAILED" in (r.error or "")
    finally:
        srv.shutdown()


def test_only_calls_near_the_context_are_counted_with_tokenize():
    """Before: every call cost a /tokenize request first when the server reported a context. A call whose bytes (plus
    the template's measured overhead) fit for sure is sent at once; one near the limit is still counted, and one
    over it fails as too_long without reaching the chat endpoint."""
    from tests.helpers import FaultServer

    server = FaultServer()
    server.healthy = True
    server.max_model_len = 400
    try:
        client = ChatClient([server.url], "fake-judge", max_retries=0)
        client.preflight()
        assert client.max_model_len == 400
        short = [{"messages": [{"role": "system", "content": "judge"},
                               {"role": "user", "content": f"answer q={i} or answer q={i + 1}"}], "max_tokens": 16}
                 for i in range(20)]  # fmt: skip
        out = client.chat(short)
        assert all(r.error is None for r in out) and server.tokenized == 1  # the template probe, once per roles
        near = [{"messages": [{"role": "user", "content": "q=1 q=2 " + "word " * n}], "max_tokens": 16} for n in (100, 500)]
        fits, too_long = client.chat(near)
        assert server.tokenized == 1 + 1 + 2  # a probe for these roles, then both counted (their bytes exceed 400)
        assert fits.error is None and too_long.kind == "too_long" and max(server.chat_words) < 400
    finally:
        server.close()
