"""An instant scripted OpenAI-compatible judge server for the client benchmark (bench_judge_client.py).

One asyncio protocol (uvloop when installed), HTTP/1.1 keep-alive, no framework: it must answer far faster than
the client under test asks, so that the benchmark measures the client. It serves GET /v1/models, POST
/v1/chat/completions and (with --max-model-len) vLLM's POST /tokenize. A judge request's verdict is decided from
its content: the candidates' texts carry their hidden quality as `q=N`; the higher one wins ([[A]] / [[B]], [[C]]
for equal). A sampling request (`n` in the body) gets `n` short choices.

Usage: python bench/judge_server.py [--port 0] [--cpu 0] [--max-model-len N] [--delay-ms MS]   (prints its base URL, then serves)
       python bench/judge_server.py --selftest [--cpu 0]                       (its own max rate, calls/s)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time

Q = re.compile(r"q=(\d+)")


def verdict_for(user: str) -> str:
    """The verdict the server gives for a judge prompt: the higher `q=` of the first two wins."""
    qs = Q.findall(user)
    if len(qs) < 2:
        return "[[C]]"
    qa, qb = int(qs[0]), int(qs[1])
    return "[[A]]" if qa > qb else "[[B]]" if qb > qa else "[[C]]"


def _chat_reply(body: dict) -> bytes:
    msgs = body["messages"]
    n = body.get("n")
    if isinstance(n, int):  # a sampling request (generate)
        texts = [f"answer {i} to {len(msgs[-1]['content'])} chars" for i in range(n)]
    else:
        user = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
        texts = [verdict_for(user)]
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
               for i, t in enumerate(texts)]
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    return json.dumps({"id": "x", "object": "chat.completion", "model": "bench-judge", "choices": choices,
                       "usage": usage}).encode()


class _Http(asyncio.Protocol):
    """One keep-alive connection: requests parsed by Content-Length (what every client here sends)."""

    max_model_len: int | None = None
    delay_s = 0.0  # each chat reply this late (a judge's latency), without blocking the others
    served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].split(b"\r\n")
            n = 0
            for line in head[1:]:
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            if len(self.buf) < end + 4 + n:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + n], self.buf[end + 4 + n :]
            method, path = head[0].split(b" ")[:2]
            self.respond(method, path, body)

    def respond(self, method: bytes, path: bytes, body: bytes) -> None:
        code = 200
        if method == b"GET" and path.endswith(b"/models"):
            model: dict[str, object] = {"id": "bench-judge", "object": "model"}
            if self.max_model_len:
                model["max_model_len"] = self.max_model_len
            out = json.dumps({"object": "list", "data": [model]}).encode()
        elif path.endswith(b"/chat/completions"):
            out = _chat_reply(json.loads(body))
            type(self).served += 1
        elif path.endswith(b"/tokenize") and self.max_model_len:
            req = json.loads(body)
            out = json.dumps({"count": sum(len(m["content"].split()) for m in req["messages"]),
                              "max_model_len": self.max_model_len}).encode()
        else:
            code, out = 404, b'{"detail": "Not Found"}'
        data = b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (code, len(out), out)
        if self.delay_s and path.endswith(b"/chat/completions"):
            asyncio.get_running_loop().call_later(self.delay_s, self.t.write, data)
        else:
            self.t.write(data)


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def serve(port: int, max_model_len: int | None, delay_s: float = 0.0) -> None:
    _Http.max_model_len, _Http.delay_s = max_model_len, delay_s
    loop = _loop()
    server = loop.run_until_complete(loop.create_server(_Http, "127.0.0.1", port, backlog=1024))
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    loop.run_forever()


def selftest(calls: int = 20000, conns: int = 64) -> float:
    """The server's own max rate: raw keep-alive requests from `conns` connections, in this process."""
    _Http.max_model_len = None
    loop = _loop()
    asyncio.set_event_loop(loop)
    payload = json.dumps({"model": "bench-judge", "max_tokens": 8, "messages": [
        {"role": "system", "content": "You are a judge."},
        {"role": "user", "content": "Question? [A] answer q=3 " + "w " * 200 + "[B] answer q=5 " + "w " * 200}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))

    async def main() -> float:
        server = await loop.create_server(_Http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        per = calls // conns

        async def client() -> None:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(per):
                w.write(request)
                head = await r.readuntil(b"\r\n\r\n")
                n = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await r.readexactly(n)
            w.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(conns)))
        return per * conns / (time.perf_counter() - t0)

    return loop.run_until_complete(main())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    ap.add_argument("--max-model-len", type=int, default=None, help="report it in /models and serve /tokenize")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="answer each chat request this many ms late")
    ap.add_argument("--selftest", action="store_true", help="print the server's own max rate (client in-process)")
    a = ap.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    if a.selftest:
        print(f"{selftest():.0f} requests/s (server and its client on one core)")
        sys.exit(0)
    serve(a.port, a.max_model_len, a.delay_ms / 1000)
