"""`prefdata generate` through real vLLM (one engine per session), a real vLLM server, and transformers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.generate import GenerateConfig, generate_run, in_shard
from prefdata.run.store import RunDir

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 12?",
    "Name a famous painter.",
]


def write_prompts(path: Path, prompts=PROMPTS, reference: bool = False) -> Path:
    rows = [{"prompt": p, **({"answer": f"reference answer {i}"} if reference else {})} for i, p in enumerate(prompts)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_vllm_candidates_options_and_resume(tmp_path, vllm_llm, tiny_llama_dir):
    prompts = write_prompts(tmp_path / "p.jsonl", reference=True)
    cfg = GenerateConfig(prompts=str(prompts), model=str(tiny_llama_dir), n=3, max_tokens=12, temperature=1.0,
                         greedy=True, second_temperature=0.3, second_n=2, reference_field="answer", batch_size=4)
    run = RunDir(tmp_path / "run")
    s = generate_run(run, cfg, llm=vllm_llm, progress=False)
    cands = run.read_candidates()
    per_prompt = 3 + 1 + 2 + 1
    assert s.prompts_sampled == 6 and cands.height == 6 * per_prompt == s.candidates
    assert cands["candidate_id"].n_unique() == cands.height
    assert len(list(run.candidates_dir.glob("shard-*.parquet"))) == 2  # batches of 4 prompts: 4 + 2
    counts = cands.group_by("prompt_id", "kind").len().sort("prompt_id", "kind")
    assert set(counts.filter(pl.col("kind") == "sample")["len"].to_list()) == {3}
    assert set(counts.filter(pl.col("kind") == "temp2")["len"].to_list()) == {2}
    gen = cands.filter(pl.col("kind") != "reference")
    assert set(gen["finish_reason"].unique()) <= {"stop", "length"}
    assert gen["n_tokens"].max() <= 12
    assert (gen.filter(pl.col("finish_reason") == "length")["n_tokens"] == 12).all()
    refs = cands.filter(pl.col("kind") == "reference")
    assert refs.height == 6 and refs["text"].str.starts_with("reference answer").all()
    # The same prompt id joins prompts and candidates.
    assert set(cands["prompt_id"]) == set(run.read_prompts()["prompt_id"])
    meta = run.read_meta()
    entry = meta["stages"]["generate"][s.sampler_hash]
    assert entry["engine_seed"] == 0 and entry["totals"]["candidates"] == cands.height
    assert entry["config"]["model"] == tiny_llama_dir.name  # the model's name, not this machine's path

    # Rerun: nothing left to do, nothing duplicated.
    s2 = generate_run(run, cfg, llm=vllm_llm, progress=False)
    assert s2.prompts_sampled == 0 and s2.prompts_done_before == 6
    assert run.read_candidates().height == cands.height

    # A different sampler config is refused unless asked to keep both apart.
    other = GenerateConfig(**{**cfg.__dict__, "temperature": 0.5})
    with pytest.raises(PrefdataError, match="another sampler config"):
        generate_run(run, other, llm=vllm_llm, progress=False)
    s3 = generate_run(run, GenerateConfig(**{**other.__dict__, "allow_new_config": True}), llm=vllm_llm, progress=False)
    both = run.read_candidates()
    assert both["sampler_hash"].n_unique() == 2 and both.height == 2 * cands.height
    assert s3.sampler_hash != s.sampler_hash


def test_vllm_skips_prompts_longer_than_context(tmp_path, vllm_llm, tiny_llama_dir):
    long_prompt = "word " * 1500  # over the engine's max_model_len of 1024
    prompts = write_prompts(tmp_path / "p.jsonl", ["Say hi.", long_prompt, "Say bye."])
    cfg = GenerateConfig(prompts=str(prompts), model=str(tiny_llama_dir), n=2, max_tokens=8)
    run = RunDir(tmp_path / "run")
    s = generate_run(run, cfg, llm=vllm_llm, progress=False)
    assert s.prompts_skipped_too_long == 1 and s.prompts_sampled == 2
    assert run.read_candidates()["prompt_id"].n_unique() == 2


def test_shards_split_prompts_exactly_once(tmp_path, vllm_llm, tiny_llama_dir):
    prompts = write_prompts(tmp_path / "p.jsonl")
    run = RunDir(tmp_path / "run")
    for i in range(3):
        cfg = GenerateConfig(prompts=str(prompts), model=str(tiny_llama_dir), n=1, max_tokens=4, shard=f"{i}/3")
        generate_run(run, cfg, llm=vllm_llm, progress=False)
    cands = run.read_candidates()
    assert sorted(cands["prompt_id"].to_list()) == sorted(run.read_prompts()["prompt_id"].to_list())
    names = [p.name for p in run.candidates_dir.glob("shard-*.parquet")]
    assert len(names) == len(set(names)) and any("0of3" in n for n in names)
    pids = run.read_prompts()["prompt_id"].to_list()
    assert all(sum(in_shard(p, (i, 3)) for i in range(3)) == 1 for p in pids)


def test_hf_backend(tmp_path, tiny_llama_dir):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:3])
    cfg = GenerateConfig(prompts=str(prompts), model=str(tiny_llama_dir), backend="hf", n=2, max_tokens=6, greedy=True)
    run = RunDir(tmp_path / "run")
    s = generate_run(run, cfg, progress=False)
    cands = run.read_candidates()
    assert s.candidates == cands.height == 3 * 3
    assert cands["n_tokens"].max() <= 6
    assert (cands.filter(pl.col("finish_reason") == "length")["n_tokens"] == 6).all()


def test_openai_backend_against_vllm_server(tmp_path, vllm_server):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:4])
    cfg = GenerateConfig(prompts=str(prompts), model=vllm_server["model"], backend="openai",
                         base_url=vllm_server["base_url"], n=2, max_tokens=16, temperature=0.7)
    run = RunDir(tmp_path / "run")
    s = generate_run(run, cfg, progress=False)
    cands = run.read_candidates()
    assert s.prompts_sampled == 4 and cands.height == 8
    assert cands["n_tokens"].null_count() == 0 and cands["n_tokens"].max() <= 16
    assert (cands["text"].str.len_chars() > 0).all()
    assert (cands.filter(pl.col("finish_reason") == "length")["n_tokens"] == 16).all()


class _FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to the real vLLM server, but answers 503 or 429 to some requests first."""

    upstream = ""
    fail_codes: list[int] = []
    lock = threading.Lock()
    calls = 0

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).calls += 1
            code = type(self).fail_codes.pop(0) if type(self).fail_codes else None
        if code is not None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"error": {"message": "injected fault"}}).encode())
            return
        req = urllib.request.Request(self.upstream + self.path.removeprefix("/v1"), data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            data = r.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_retries_429_and_5xx(tmp_path, vllm_server):
    _FlakyProxy.upstream = vllm_server["base_url"]
    _FlakyProxy.fail_codes = [503, 429, 500]
    _FlakyProxy.calls = 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
        cfg = GenerateConfig(prompts=str(prompts), model="demo", backend="openai", n=2, max_tokens=8,
                             base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", max_retries=4)
        s = generate_run(RunDir(tmp_path / "run"), cfg, progress=False)
        assert s.prompts_sampled == 2 and s.candidates == 4
        assert _FlakyProxy.calls == 2 + 3
    finally:
        srv.shutdown()


def test_openai_unreachable_server_is_one_clear_error(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    cfg = GenerateConfig(prompts=str(prompts), model="x", backend="openai", base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(PrefdataError, match="cannot reach the server"):
        generate_run(RunDir(tmp_path / "run"), cfg, progress=False)


def test_resume_after_sigkill(tmp_path, vllm_server):
    """kill -9 in the middle loses at most the batch in flight; the rerun completes with no duplicate."""
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Give me fact number {i} about the sea." for i in range(24)])
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "prefdata.cli", "generate", str(prompts), "--run", str(run), "--backend", "openai",
           "--base-url", vllm_server["base_url"], "--model", "demo", "-n", "2", "--max-tokens", "24",
           "--batch-size", "2", "--concurrency", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((run / "candidates").glob("shard-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = RunDir(run).read_candidates()
    assert before is not None and 0 < before["prompt_id"].n_unique() < 24
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    after = RunDir(run).read_candidates()
    assert after["prompt_id"].n_unique() == 24 and after.height == 48
    assert after["candidate_id"].n_unique() == 48
    assert f"{before['prompt_id'].n_unique()} already done" in out.stdout
    # No temp files left visible to readers, and earlier shards were kept as they were.
    kept = after.filter(pl.col("prompt_id").is_in(before["prompt_id"].implode()))
    assert kept.sort("candidate_id")["text"].to_list() == before.sort("candidate_id")["text"].to_list()


def test_vllm_sampler_reports_progress_while_decoding(vllm_llm, tiny_llama_dir):
    """Issue 19 §2: with every request of a batch in flight, none finishes until near the end, so the bar sat at 0%.
    `on_tick` reports requests in flight and tokens decoded while the engine steps."""
    from prefdata.generate.config import SampleSpec
    from prefdata.generate.sampling import make_sampler

    sampler = make_sampler(GenerateConfig(model=str(tiny_llama_dir), max_tokens=48), vllm_llm)
    sampler.tick_s = 0.0  # every step (a real run: every second)
    ticks: list[tuple[int, int]] = []
    convs = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
    out = sampler.sample(convs, [SampleSpec("sample", 3, 0.8)], on_tick=lambda f, d: ticks.append((f, d)))
    actual = sum(c.n_tokens for per_prompt in out for comps in per_prompt for c in comps)
    assert ticks[0][0] == 4 and 0 < ticks[0][1] < actual  # all in flight, some tokens decoded, none finished
    decoded = [d for _, d in ticks]
    assert decoded == sorted(decoded) and len(set(decoded)) > 10  # it moves, step after step
    assert abs(decoded[-1] - actual) <= 0.1 * actual  # the estimate ends at the real count
