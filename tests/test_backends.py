"""The one OpenAI-compatible client under both adapters: Retry-After, errors as values, the early stop."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prefdata.backends.openai_client import ChatClient
from prefdata.errors import PrefdataError
from prefdata.generate import GenerateConfig
from prefdata.samplers import SampleSpec
from prefdata.samplers.openai_api import OpenAISampler
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
    sampler = OpenAISampler(cfg)
    t0 = time.monotonic()
    with pytest.raises(PrefdataError, match="cannot reach the server"):
        sampler.sample([[{"role": "user", "content": f"q{i}"}] for i in range(16)], [SampleSpec("sample", 2, 0.8)])
    assert time.monotonic() - t0 < 20.0  # without the stop: 6 retries with backoff (1+2+4+8+16+32 s) per request
