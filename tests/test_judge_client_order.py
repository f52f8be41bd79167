"""Replies that come back in random order, after random delays, still land on their own pair (issue 24).

The client keeps several rounds of calls in flight on shared keep-alive connections; a mix-up between calls would
put one pair's verdict on another. The real local server here decides each verdict from the request's own content
(a hash of the two answers as shown, not a consistent order, so no ranking logic can hide a swap), sleeps a random
while before answering, and for some pairs first answers without a verdict (the repair follow-up). Every stored
judgment must carry the verdict the server gave for exactly its pair in exactly its order.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl

from prefdata.llm.openai_client import ChatClient
from prefdata.rank import RankConfig, rank_run, read_judgments
from tests.helpers import completion, make_candidates_run

ANSWERS = re.compile(r"Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A's Answer\].*?Assistant B's Answer\]\n(.*?)\n\[The End",
                     re.S)


def verdict_of(first: str, second: str) -> str:
    """The server's verdict for two answers in this order: a hash, so (x, y) and (y, x) are unrelated."""
    return "abc"[int(hashlib.sha256(f"{first}\x00{second}".encode()).hexdigest(), 16) % 3]


def needs_repair(first: str, second: str) -> bool:
    return int(hashlib.sha256(f"repair{first}\x00{second}".encode()).hexdigest(), 16) % 5 == 0


class _Shuffling(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server
    rng = random.Random(0)
    lock = threading.Lock()
    seen: list[tuple[str, str]] = []

    def do_GET(self):  # noqa: N802 - http.server API
        self._send(json.dumps({"object": "list", "data": [{"id": "shuffler", "object": "model"}]}).encode())

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        msgs = body["messages"]
        first, second = ANSWERS.search(msgs[1]["content"]).groups()  # type: ignore[union-attr]
        with self.lock:
            delay = self.rng.random() * 0.03
            type(self).seen.append((first, second))
        time.sleep(delay)  # answers overtake each other
        if len(msgs) == 2 and needs_repair(first, second):
            self._send(completion("Both have merit."))
        else:
            self._send(completion({"a": "[[A]]", "b": "[[B]]", "c": "[[C]]"}[verdict_of(first, second)]))

    def _send(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_verdicts_land_on_their_own_pair_when_replies_come_back_shuffled(tmp_path):
    _Shuffling.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Shuffling)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    texts = [[f"prompt {p} answer {i} words {'x' * i}" for i in range(5)] for p in range(6)]
    run, _ = make_candidates_run(tmp_path / "r", texts)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        # batch 8, concurrency 16: three rounds in flight at once, each split over many connections
        cfg = RankConfig(judge="mt-bench-pair-v2", base_url=[url], strategy="round-robin", concurrency=16, batch_size=8,
                         max_retries=0, progress=False)
        s = rank_run(run, cfg)
    finally:
        srv.shutdown()
        srv.server_close()
    j = read_judgments(run, s["judge_hash"])
    assert j.height == 6 * 5 * 4 == s["judge_calls_new"]  # every ordered pair once
    text = dict(run.read_candidates().select("candidate_id", "text").iter_rows())
    want = {"a": "a", "b": "b", "c": "tie"}
    for a_id, b_id, verdict, winner, repaired in j.select("a_id", "b_id", "verdict", "winner_id", "repaired").iter_rows():
        first, second = text[a_id], text[b_id]
        v = want[verdict_of(first, second)]
        assert verdict == v, (first, second, verdict, v)
        assert winner == {"a": a_id, "b": b_id, "tie": None}[v]
        assert repaired == needs_repair(first, second)
    assert j["repaired"].sum() > 0 and set(j["verdict"]) == {"a", "b", "tie"}
    # the server saw each ordered pair once, plus once more for each repair
    assert len(_Shuffling.seen) == j.height + j["repaired"].sum()
    assert j.filter(pl.col("verdict") == "fail").height == 0


def test_bare_client_results_in_request_order_with_shuffled_replies():
    _Shuffling.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Shuffling)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = ChatClient([f"http://127.0.0.1:{srv.server_address[1]}/v1"], "shuffler", concurrency=12, max_retries=0)
        pairs = [(f"left {i}", f"right {i * 7}") for i in range(60)]
        bodies = [{"max_tokens": 8, "messages": [{"role": "system", "content": "judge"}, {"role": "user", "content": (
            f"[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
            f"[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]")}]} for a, b in pairs]
        # two batches submitted together share the connections and the 12 slots
        f1, f2 = client.submit(bodies[:30]), client.submit(bodies[30:])
        out = f1.result(60) + f2.result(60)
        client.close()
    finally:
        srv.shutdown()
        srv.server_close()
    want = {"a": "[[A]]", "b": "[[B]]", "c": "[[C]]"}
    for (a, b), r in zip(pairs, out, strict=True):
        assert r.error is None
        expected = "Both have merit." if needs_repair(a, b) else want[verdict_of(a, b)]
        assert r.choices[0].text == expected, (a, b)
