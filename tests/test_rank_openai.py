"""The OpenAI-compatible judge against real HTTP servers: a faulty one written here, and real vLLM.

The faulty server is a small real HTTP server on 127.0.0.1 speaking the chat-completions JSON. It judges by
the hidden quality in the candidate texts, and for chosen requests answers 500 once, sends garbage once,
replies without a verdict (repair path), or fails every time (until it is "fixed" for the rerun).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_rank_support import make_run, quality  # noqa: E402

from prefdata.errors import PrefdataError  # noqa: E402
from prefdata.rank import RankConfig, rank_run, read_judgments, read_rankings  # noqa: E402


class FaultServer:
    def __init__(self) -> None:
        self.healthy = False
        self.delay_s = 0.0
        self.max_model_len: int | None = None  # reported in /models like vLLM; chat refuses longer requests
        self.tokenize = True  # serve vLLM's POST /tokenize (counts words: the fake server's tokenizer)
        self.chat_words: list[int] = []  # word counts of the chat requests that reached the server  # answer each chat request this late (keeps a subprocess busy in lock and kill tests)
        self.attempts: Counter[str] = Counter()
        self.requests: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.endswith("/models"):
                    model = {"id": "fake-judge", "object": "model"}
                    if outer.max_model_len:
                        model["max_model_len"] = outer.max_model_len
                    self._send(200, json.dumps({"object": "list", "data": [model]}).encode())
                else:
                    self._send(404, b"{}")

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/tokenize"):
                    if not outer.tokenize:
                        self._send(404, b'{"detail": "Not Found"}')
                        return
                    n = _words(body["messages"])
                    self._send(200, json.dumps({"count": n, "max_model_len": outer.max_model_len}).encode())
                    return
                code, payload = outer.answer(body)
                self._send(code, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body: dict) -> tuple[int, bytes]:
        msgs = body["messages"]
        n_words = _words(msgs)
        with self.lock:
            self.chat_words.append(n_words)
        if self.max_model_len and n_words + body.get("max_tokens", 0) > self.max_model_len:
            msg = (f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                   f"{n_words + body.get('max_tokens', 0)} tokens.")
            return 400, json.dumps({"object": "error", "message": msg, "code": 400}).encode()
        user = next(m["content"] for m in msgs if m["role"] == "user")
        key = user
        with self.lock:
            self.attempts[key] += 1
            n = self.attempts[key]
            self.requests.append(key)
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        kind = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 6
        if not self.healthy:
            if kind == 0 and n == 1:
                return 500, b'{"error": "transient"}'
            if kind == 1 and n == 1:
                return 200, b"<html>this is not json"
            if kind == 2:
                return 503, b'{"error": "down"}'
            if kind == 3 and len(msgs) == 2:
                return 200, completion("Both answers have merit; hard to say.")
        qa, qb = (int(x) for x in re.findall(r"q=(\d+)", user)[:2])
        return 200, completion("[[A]]" if qa > qb else "[[B]]" if qb > qa else "[[C]]")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _words(msgs: list[dict]) -> int:
    return sum(len(m["content"].split()) for m in msgs)


def completion(text: str) -> bytes:
    return json.dumps({
        "id": "x", "object": "chat.completion", "model": "fake-judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }).encode()


@pytest.fixture
def fault_servers():
    servers = [FaultServer(), FaultServer()]
    yield servers
    for s in servers:
        s.close()


def _texts(qs: list[int]) -> list[str]:
    return [f"answer q={q} number {i}" for i, q in enumerate(qs)]


def test_faulty_endpoints_retried_recorded_and_resumed(tmp_path, fault_servers):
    qs = [[3, 1, 4, 2], [5, 9, 2], [1, 6, 3, 8, 2]]
    run, pids = make_run(tmp_path / "r", [_texts(q) for q in qs])
    cfg = RankConfig(judge="mt-bench-pair-v2", base_url=[s.url for s in fault_servers], max_retries=2, backoff_s=0.01,
                     concurrency=4, batch_size=8, progress=False)
    s1 = rank_run(run, cfg)
    j1 = read_judgments(run, s1["judge_hash"])
    assert all(s.requests for s in fault_servers)  # load spread over both URLs
    fails = j1.filter(pl.col("verdict") == "fail")
    assert fails.height > 0 and s1["failures"] > 0
    assert fails["error"].str.contains("gave up after 3 attempts").all()
    repaired = j1.filter(pl.col("repaired"))
    assert repaired.height > 0 and repaired["raw"].str.contains("<<<repair>>>").all()
    assert (repaired["verdict"] != "fail").all()
    assert (j1.filter(pl.col("verdict") != "fail")["attempts"] >= 1).all()
    ok_keys = {(r["a_id"], r["b_id"]) for r in j1.filter(pl.col("verdict") != "fail").iter_rows(named=True)}
    # the rerun against fixed servers asks only what failed, and completes the ranking
    for s in fault_servers:
        s.healthy = True
        s.requests.clear()
    s2 = rank_run(run, cfg)
    assert s2["judge_hash"] == s1["judge_hash"]
    assert s2["failures"] == 0 and s2["judge_calls_new"] >= fails.height
    j2 = read_judgments(run, s2["judge_hash"])
    assert j2.height == j1.height + s2["judge_calls_new"]  # nothing lost, nothing rewritten
    new_rows = j2.tail(s2["judge_calls_new"])
    assert not ({(r["a_id"], r["b_id"]) for r in new_rows.iter_rows(named=True)} & ok_keys)
    df = read_rankings(run, s2["judge_hash"])
    cands = run.read_candidates()
    text_of = dict(zip(cands["candidate_id"], cands["text"], strict=True))
    for pid, q in zip(pids, qs, strict=True):
        row = df.filter(pl.col("prompt_id") == pid).row(0, named=True)
        assert quality(text_of[row["best_id"]]) == max(q) and quality(text_of[row["worst_id"]]) == min(q)
        assert row["consistency"] == 1.0
    s3 = rank_run(run, cfg)
    assert s3["judge_calls_new"] == 0


def test_unreachable_server_is_one_clear_error(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run, _ = make_run(tmp_path / "r", [_texts([1, 2])])
    with pytest.raises(PrefdataError, match="cannot reach the judge server"):
        rank_run(run, RankConfig(base_url=[f"http://127.0.0.1:{port}/v1"], progress=False))


def test_cli_rank_against_fault_server(tmp_path, fault_servers, capsys):
    from prefdata.cli import main

    fault_servers[0].healthy = True
    run, _ = make_run(tmp_path / "r", [_texts([2, 7, 1])])
    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(run.path), "--judge", "verdict-only", "--base-url", fault_servers[0].url,
              "--position-bias", "random", "--strategy", "round-robin", "--no-progress"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "ranked 1 prompts" in out
    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(tmp_path / "missing"), "--judge", "verdict-only", "--base-url", fault_servers[0].url])
    assert e.value.code == 2
    assert "not a prefdata run" in capsys.readouterr().err


def test_requests_per_minute_limit(tmp_path, fault_servers):
    import time

    fault_servers[0].healthy = True
    run, _ = make_run(tmp_path / "r", [_texts([3, 1, 2, 5])])
    cfg = RankConfig(base_url=[fault_servers[0].url], requests_per_minute=600, strategy="round-robin",
                     position_bias="fixed", progress=False)
    t0 = time.monotonic()
    s = rank_run(run, cfg)
    assert s["judge_calls_new"] == 6 and time.monotonic() - t0 >= 5 * 0.1 * 0.95  # 10 per second at most


def test_cli_yaml_config_and_flags(tmp_path, fault_servers, capsys):
    from prefdata.cli import main

    fault_servers[0].healthy = True
    run, _ = make_run(tmp_path / "r", [_texts([2, 7, 1])])
    conf = tmp_path / "rank.yaml"
    conf.write_text(f"judge: arena-hard-style\nbase_url: {fault_servers[0].url}\nstrategy: round-robin\nposition_bias: fixed\n")
    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(run.path), "--config", str(conf), "--position-bias", "both", "--no-progress"])
    # the fault server answers in mt-bench's [[A]] style, which arena-hard's rule cannot read: every call fails,
    # so rank ends with exit 3 (failed calls remain) and says how to retry
    assert e.value.code == 3
    assert "run the same command again" in capsys.readouterr().err
    meta = run.read_meta()["stages"]["rank"]
    (entry,) = meta.values()
    assert entry["config"]["judge"] == "arena-hard-style" and entry["config"]["position_bias"] == "both"
    assert entry["template"] == "arena-hard-style" and entry["counts"]["comparisons"] == 6
    conf.write_text("strategy: best-of\n")
    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(run.path), "--config", str(conf)])
    assert e.value.code == 2 and "strategy must be" in capsys.readouterr().err


@pytest.mark.slow
def test_openai_judge_on_real_vllm_server(tmp_path, vllm_server):
    qs = [[1, 2, 3], [4, 5]]
    texts = [["Paris is the capital of France.", "The capital of France is Lyon.", "I like turtles."],
             ["2 + 2 = 4.", "2 + 2 = 5."]]
    run, _ = make_run(tmp_path / "r", texts, ["What is the capital of France?", "What is 2 + 2?"])
    assert len(qs) == len(texts)
    cfg = RankConfig(judge="mt-bench-pair-v2", base_url=[vllm_server["base_url"]], judge_model=vllm_server["model"],
                     max_tokens=48, progress=False)
    s = rank_run(run, cfg)
    j = read_judgments(run, s["judge_hash"])
    assert j.height == s["judge_calls_new"] > 0
    assert set(j["verdict"].to_list()) <= {"a", "b", "tie", "fail"}
    assert (j["raw"].str.len_chars() > 0).all()  # the judge's text is kept, also for failures
    assert s["comparisons"] <= 2 * (2 * 2 + 2 * 1)
    df = read_rankings(run, s["judge_hash"])
    assert df.height == 2
    meta = run.read_meta()["stages"]["rank"][s["judge_hash"]]
    assert meta["identity"]["judge"]["model"] == "demo" and meta["template_sha256"]
    # logprob mode: one token, P(first) kept as the score
    lp = rank_run(run, RankConfig(judge="verdict-only", base_url=[vllm_server["base_url"]], logprobs=True, progress=False))
    assert lp["judge_hash"] != s["judge_hash"]
    jl = read_judgments(run, lp["judge_hash"])
    ok = jl.filter(pl.col("verdict") != "fail")
    assert ok.height > 0 and ok["score"].is_between(0.0, 1.0).all()
    assert (jl.filter(pl.col("verdict") == "fail")["error"].str.starts_with("logprob")).all()
