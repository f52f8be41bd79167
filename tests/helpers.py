"""Builders shared by the tests and the benchmarks: run directories written through the real store, tiny real
models, preference pairs, and oracle judges. One module, so no test file imports another.

Oracle judges are plain Python objects implementing the judge interface (judge(requests) -> verdicts); they
stand in for a judge's *opinion*, not for any external system.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pytest

from prefdata.judges.verdict import PairRequest, Verdict
from prefdata.run.records import candidate_id, prompt_id
from prefdata.run.store import MESSAGES_DTYPE, RunDir

PROMPT_SCHEMA = {"prompt_id": pl.String, "messages": MESSAGES_DTYPE, "source": pl.String, "reference": pl.String}
SAMPLER = "samplerhash00001"
JUDGE = "judgehash0000001"


# ---------------------------------------------------------------- run directories


def prompt_row(question: str | list[dict[str, str]], source: str = "{}", reference: str | None = None) -> dict[str, Any]:
    """One row of prompts.parquet (a string question becomes one user message)."""
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    return {"prompt_id": prompt_id(messages), "messages": messages, "source": source, "reference": reference}


def candidate_row(
    pid: str, sampler: str, index: int, text: str, *, finish: str = "stop", n_tokens: int | None = None,
    model: str = "test", kind: str = "sample",
) -> dict[str, Any]:  # fmt: skip
    """One row of candidates/ as generate writes it (n_tokens defaults to the word count)."""
    return {
        "prompt_id": pid, "candidate_id": candidate_id(pid, sampler, kind, index), "sampler_hash": sampler,
        "kind": kind, "index": index, "text": text, "finish_reason": finish,
        "n_tokens": len(text.split()) if n_tokens is None else n_tokens, "model": model,
    }  # fmt: skip


def write_inputs(run: RunDir, prows: list[dict[str, Any]], crows: list[dict[str, Any]]) -> RunDir:
    """prompts.parquet and one candidates shard (none when there are no candidates)."""
    run.write_prompts(pl.DataFrame(prows, schema=PROMPT_SCHEMA))
    if crows:
        run.write_shard(run.candidates_dir, pl.DataFrame(crows))
    return run


def make_candidates_run(
    path: Path, texts_per_prompt: list[list[str]], questions: list[str] | None = None
) -> tuple[RunDir, list[str]]:
    """A run directory with prompts.parquet, one candidates shard and run.json, as `generate` writes them."""
    run = RunDir(path)
    run.record_stage("generate", "test", {"note": "built by the test"})
    questions = questions or [f"Question number {i}?" for i in range(len(texts_per_prompt))]
    prows = [prompt_row(q, source=json.dumps({"q": q})) for q in questions]
    crows = [
        candidate_row(p["prompt_id"], "s0", i, t)
        for p, texts in zip(prows, texts_per_prompt, strict=True)
        for i, t in enumerate(texts)
    ]
    write_inputs(run, prows, crows)
    return run, [p["prompt_id"] for p in prows]


def make_ref_run(path: Path, items: list[tuple[str, str | None, list[str]]]) -> tuple[RunDir, list[str]]:
    """A run as `generate --reference-field` writes it: prompts with a reference column, sampled candidates."""
    run = RunDir(path)
    run.record_stage("generate", "test", {"note": "built by the test"})
    prows = [prompt_row(q, reference=ref) for q, ref, _ in items]
    crows = [candidate_row(p["prompt_id"], "s0", i, t) for p, (_, _, texts) in zip(prows, items, strict=True)
             for i, t in enumerate(texts)]  # fmt: skip
    write_inputs(run, prows, crows)
    return run, [p["prompt_id"] for p in prows]


def make_pair_run(path: Path, pairs: list[tuple[str, str]]) -> RunDir:
    """An eval run as eval_generate leaves it: one answer per side and prompt, sampler hashes mhash and bhash."""
    run = RunDir(path)
    run.record_stage("generate", "m", {"note": "built by the test"})
    prows = [prompt_row(f"Task number {i}") for i in range(len(pairs))]
    crows = [candidate_row(p["prompt_id"], shash, 0, text, model=shash)
             for p, (mt, bt) in zip(prows, pairs, strict=True) for shash, text in (("mhash", mt), ("bhash", bt))]  # fmt: skip
    return write_inputs(run, prows, crows)


def cand(text: str, rank: int | None, score: float | None = None, finish: str = "stop", n_tokens: int | None = None) -> dict:
    return {"text": text, "rank": rank, "score": score, "finish": finish, "n_tokens": n_tokens}


RANKING_SCHEMA = {
    "prompt_id": pl.String, "judge_hash": pl.String, "strategy": pl.String,
    "candidate_ids": pl.List(pl.String), "ranks": pl.List(pl.Int64), "scores": pl.List(pl.Float64),
    "best_id": pl.String, "worst_id": pl.String, "complete": pl.Boolean, "n_candidates": pl.Int64,
    "comparisons": pl.Int64, "ties": pl.Int64, "failures": pl.Int64, "inconsistent": pl.Int64,
    "consistency": pl.Float64, "margin": pl.Float64,
}  # fmt: skip


def make_ranked_run(
    path: Path,
    prompts: list[tuple[str | list[dict[str, str]], list[dict[str, Any]]]],
    *,
    judge: str = JUDGE,
    strategy: str = "round-robin",
    judgments: list[tuple[int, int, int, str]] | None = None,
    rank_config: dict[str, Any] | None = None,
    write_rankings: bool = True,
) -> RunDir:
    """A run whose prompt i has the given candidates (see `cand`), listed best first with their ranks and scores.

    judgments: (prompt index, candidate index a, candidate index b, verdict a|b|tie|fail) rows.
    Candidate ids are deterministic (candidate_id of the prompt, SAMPLER, "sample", position).
    """
    run = RunDir(path)
    run.record_stage(
        "generate",
        SAMPLER,
        {"config": {"model": "tiny-model", "n": 4, "temperature": 0.8, "max_tokens": 64}, "model": "tiny-model"},
    )
    prows, crows, rrows = [], [], []
    for prompt, cands in prompts:
        prows.append(prompt_row(prompt))
        pid = prows[-1]["prompt_id"]
        rows = [candidate_row(pid, SAMPLER, i, c["text"], finish=c["finish"], n_tokens=c["n_tokens"], model="tiny-model")
                for i, c in enumerate(cands)]  # fmt: skip
        crows += rows
        ids = [r["candidate_id"] for r in rows]
        ranks = [c["rank"] for c in cands]
        known = [r for r in ranks if r is not None]
        strict = bool(known) and min(known) < max(known)
        complete = all(r is not None for r in ranks)
        scores = [c["score"] for c in cands]
        have = [s for s in scores if s is not None]
        rrows.append(
            {
                "prompt_id": pid, "judge_hash": judge, "strategy": strategy if complete else "iterative",
                "candidate_ids": ids, "ranks": ranks, "scores": scores,
                "best_id": ids[0] if strict else None, "worst_id": ids[-1] if strict else None,
                "complete": complete, "n_candidates": len(ids), "comparisons": 6, "ties": 1, "failures": 0,
                "inconsistent": 1, "consistency": 0.8, "margin": (max(have) - min(have)) if have else None,
            }
        )  # fmt: skip
    write_inputs(run, prows, crows)
    if write_rankings:
        run.write_shard(run.rankings_dir(judge), pl.DataFrame(rrows, schema=RANKING_SCHEMA))
        run.record_stage(
            "rank",
            judge,
            {
                "config": rank_config or {"model": "judge-model", "position_bias": "both", "strategy": strategy},
                "template": "pairwise-v1",
                "template_sha256": "ab" * 32,
            },
        )
    if judgments:
        jrows = []
        for pi, a, b, verdict in judgments:
            ids = rrows[pi]["candidate_ids"]
            winner = {"a": ids[a], "b": ids[b]}.get(verdict)
            jrows.append(
                {
                    "prompt_id": rrows[pi]["prompt_id"], "a_id": ids[a], "b_id": ids[b], "order": "ab",
                    "verdict": verdict, "winner_id": winner, "score": None, "raw": "...", "error": None,
                    "latency_s": 0.1,
                }
            )  # fmt: skip
        run.write_shard(run.judgments_dir(judge), pl.DataFrame(jrows, schema_overrides={"score": pl.Float64, "error": pl.String}))
    return run


def four(prefix: str = "") -> list[dict[str, Any]]:
    """Four distinct candidates ranked 1..4 with scores 4..1 (the best is also the longest)."""
    return [
        cand(f"{prefix}best answer with many words here", 1, 4.0),
        cand(f"{prefix}good answer with words", 2, 3.0),
        cand(f"{prefix}ok answer", 3, 2.0),
        cand(f"{prefix}bad", 4, 1.0),
    ]


# ---------------------------------------------------------------- oracle judges


def quality(text: str) -> int:
    """Candidates in tests are named like 'cand q=7': the hidden true quality."""
    return int(text.split("q=")[1].split()[0])


class OrderJudge:
    """Prefers the higher hidden quality; equal quality is a tie. Optional noise flips a verdict."""

    def __init__(self, noise: float = 0.0, seed: int = 0) -> None:
        self.noise = noise
        self.rng = random.Random(seed)
        self.calls: list[tuple[str, str]] = []

    def config(self) -> dict[str, object]:
        return {"kind": "oracle-order", "noise": self.noise}

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        out = []
        for r in requests:
            self.calls.append((r.first.id, r.second.id))
            qa, qb = quality(r.first.text), quality(r.second.text)
            slot = "a" if qa > qb else "b" if qb > qa else "tie"
            if self.noise and slot != "tie" and self.rng.random() < self.noise:
                slot = "b" if slot == "a" else "a"
            out.append(Verdict.from_slot(r, slot, raw=f"oracle {slot}"))
        return out


class FirstJudge:
    """Always prefers whatever is shown first: pure position bias."""

    def __init__(self) -> None:
        self.calls = 0

    def config(self) -> dict[str, object]:
        return {"kind": "always-first"}

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        self.calls += len(requests)
        return [Verdict.from_slot(r, "a", raw="[[A]]") for r in requests]


def quality_texts(qs: list[int]) -> list[str]:
    return [f"answer q={q} number {i}" for i, q in enumerate(qs)]


# ---------------------------------------------------------------- a scripted judge server


class FaultServer:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions JSON (a scripted judge).

    It judges by the hidden quality in the candidate texts, and for chosen requests answers 500 once, sends garbage
    once, replies without a verdict (repair path), or fails every time (until `healthy` is set for the rerun)."""

    def __init__(self) -> None:
        self.healthy = False
        self.delay_s = 0.0
        self.max_model_len: int | None = None  # reported in /models like vLLM; chat refuses longer requests
        self.tokenize = True  # serve vLLM's POST /tokenize (counts words: the fake server's tokenizer)
        self.tokenized = 0  # /tokenize requests answered
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
                    n = message_words(body["messages"])
                    with outer.lock:
                        outer.tokenized += 1
                    self._send(200, json.dumps({"count": n, "max_model_len": outer.max_model_len}).encode())
                    return
                code, payload = outer.reply(body, dict(self.headers))
                self._send(code, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:
        """The answer to a chat request; a subclass that needs the request's headers (to echo them) overrides this."""
        return self.answer(body)

    def answer(self, body: dict) -> tuple[int, bytes]:
        msgs = body["messages"]
        n_words = message_words(msgs)
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


class QualityServer:
    """A scripted OpenAI-compatible judge on 127.0.0.1 that decides from true qualities, with position bias and noise.

    Candidate texts carry their quality as `q=<number>`; the first two in the judge prompt are the answers shown
    first and second. As bench/bench_ranking.py's simulated judge: z = (q₁ - q₂)/temp + bias + ε, ε ~ Logistic(0, 1)
    drawn from a hash of the request (the same call always gets the same verdict: a rerun or another strategy sees
    what a cache would give); first wins if z > tie_band, second if z < -tie_band, else a tie. temp 0: no noise and
    no bias (the higher quality wins, equal qualities tie). `always_first`: pure position bias. While not `healthy`,
    a `fail_rate` share of the calls (by hash) get HTTP 503.
    """

    def __init__(self, temp: float = 0.0, bias: float = 0.0, tie_band: float = 0.0, seed: int = 0,
                 always_first: bool = False, fail_rate: float = 0.0, delay_s: float = 0.0) -> None:  # fmt: skip
        self.temp, self.bias, self.tie_band, self.seed = temp, bias, tie_band, seed
        self.always_first, self.fail_rate, self.delay_s = always_first, fail_rate, delay_s
        self.healthy = False
        self.lock = threading.Lock()
        self.requests: list[str] = []  # the user message of every chat request (failed ones too)
        self.failed: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "fake-judge", "object": "model"}]}).encode())
                else:
                    self._send(404, b"{}")

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/chat/completions"):
                    self._send(404, b'{"detail": "Not Found"}')
                    return
                self._send(*outer.answer(body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def uniform(self, key: str, salt: str) -> float:
        h = hashlib.sha256(f"{self.seed}:{salt}:{key}".encode()).digest()
        return (int.from_bytes(h[:8], "big") + 0.5) / 2**64

    def verdict(self, user: str) -> str:
        """A, B or C for one judge prompt."""
        q1, q2 = (float(x) for x in re.findall(r"q=(-?\d+(?:\.\d+)?)", user)[:2])
        if self.always_first:
            return "A"
        if self.temp == 0:
            return "A" if q1 > q2 else "B" if q2 > q1 else "C"
        u = self.uniform(user, "noise")
        z = (q1 - q2) / self.temp + self.bias + math.log(u / (1.0 - u))
        return "A" if z > self.tie_band else "B" if z < -self.tie_band else "C"

    def answer(self, body: dict) -> tuple[int, bytes]:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        with self.lock:
            self.requests.append(user)
        if self.delay_s:
            time.sleep(self.delay_s)
        if not self.healthy and self.fail_rate and self.uniform(user, "fail") < self.fail_rate:
            with self.lock:
                self.failed.append(user)
            return 503, b'{"error": "down"}'
        return 200, completion(f"[[{self.verdict(user)}]]")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def message_words(msgs: list[dict]) -> int:
    return sum(len(m["content"].split()) for m in msgs)


def completion(text: str) -> bytes:
    return json.dumps({
        "id": "x", "object": "chat.completion", "model": "fake-judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }).encode()


# ---------------------------------------------------------------- tiny real models


def build_tiny_llama(out: Path, tokenizer_dir: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random Llama that vLLM's CPU kernels accept (head_dim 64) with the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_rm(out: Path, tokenizer_dir: Path, seed: int = 0, max_pos: int = 512) -> Path:
    """A random Llama sequence classifier (one score) with the demo tokenizer: a real reward model, small."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=max_pos, num_labels=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------- preference pairs for training

TOPICS = ["cats", "dogs", "rain", "the sea", "music", "bread", "trains", "books", "stars", "tea", "snow", "cars"]
FAST = {"learning_rate": 1e-3, "warmup_steps": 0, "per_device_train_batch_size": 4, "logging_steps": 1}
FAST |= {"report_to": [], "disable_tqdm": True, "dataloader_pin_memory": False, "seed": 0}
FAST |= {"bf16": False}  # float32 compute, for the exact comparisons (the CPU bf16 default has its own test)


def pair_rows(n: int = 12) -> list[dict]:
    """Conversational chosen/rejected rows that a tiny model can learn within a few steps."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Tell me something about {t}."}],
            "chosen": [{"role": "assistant", "content": f"Here is a fact about {t}: many people like {t}."}],
            "rejected": [{"role": "assistant", "content": "no no no no"}],
            "prompt_id": f"p{i}",
            "margin": 1.0,
        }
        for i, t in enumerate(TOPICS[:n])
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


_HOLD = """
import sys, time
from pathlib import Path
from prefdata.run.store import stage_lock
part = sys.argv[3] if len(sys.argv) > 3 else None
with stage_lock(Path(sys.argv[1]), sys.argv[2], part):
    print("locked", flush=True)
    time.sleep(60)
"""


def hold_stage_lock(run_path: Path, stage: str, part: str | None = None) -> subprocess.Popen:
    """Another process holding a stage lock (kill it to release)."""
    args = [sys.executable, "-c", _HOLD, str(run_path), stage] + ([part] if part else [])
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *args: str, as_argv: bool = False) -> CliResult:
    """`prefdata ARGS` in this process: its exit code and what it printed. `as_argv`: also put the command in
    sys.argv, the command line that run.json and the dataset card record."""
    from prefdata.cli import main

    argv = sys.argv
    if as_argv:
        sys.argv = ["prefdata", *args]
    try:
        with pytest.raises(SystemExit) as e:
            main(list(args))
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return CliResult(e.value.code, out, err)  # type: ignore[arg-type]
