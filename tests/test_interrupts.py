"""SIGTERM, SIGHUP and Ctrl-C stop a stage as Ctrl-C always did: one line, exit 128+signal, nothing left running,
and a rerun resumes with nothing lost or duplicated (the slow test does it with a real vLLM engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from prefdata.run.interrupts import reap, wait_gone
from prefdata.run.store import RunDir
from tests.helpers import write_jsonl

CHILD_IGNORING_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"


def test_reap_kills_a_process_that_ignores_sigterm():
    """vLLM's EngineCore was seen ignoring SIGTERM for 30 s: the reaper waits its grace, then kills."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD_IGNORING_TERM], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    t0 = time.monotonic()
    killed = reap([psutil.Process(proc.pid)], grace_s=1.0)
    assert killed == [proc.pid]
    proc.wait(timeout=10)  # psutil has reaped it already: its exit code is gone, the process too
    assert not wait_gone([proc.pid], 1.0)
    assert time.monotonic() - t0 < 10


class _Slow(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that takes requests and answers none in time: the stage is busy sampling."""

    chats: list[float] = []

    def log_message(self, *a: object) -> None:
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._send(200, json.dumps({"object": "list", "data": [{"id": "slow", "object": "model"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        if not self.path.endswith("/chat/completions"):
            self._send(404, b'{"detail": "Not Found"}')
            return
        type(self).chats.append(time.time())
        time.sleep(30)
        self._send(500, b'{"error": "too late"}')


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP"),
                                                   (signal.SIGINT, 130, "")])
def test_a_signal_stops_a_stage_with_one_line_and_its_exit_code(tmp_path, sig, code, name):
    """Before: SIGTERM and SIGHUP killed prefdata on the spot (exit 143/129, no line, no cleanup, the lock left)."""
    _Slow.chats = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(4)])
        run = tmp_path / "run"
        cmd = [sys.executable, "-m", "prefdata.cli", "generate", str(prompts), "--run", str(run), "--backend", "openai",
               "--base-url", f"http://127.0.0.1:{srv.server_address[1]}/v1", "--model", "slow", "-n", "1",
               "--max-retries", "0", "--quiet"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not _Slow.chats and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert _Slow.chats, "generate never reached the server"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=90)  # a loaded 2-core machine: the stop itself takes a second
    finally:
        srv.shutdown()
        srv.server_close()
    assert proc.returncode == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == f"interrupted{' by ' + name if name else ''}: finished shards are kept; run the same command again to resume"
    assert "Traceback" not in err


def _candidates(run: Path) -> int:
    df = RunDir(run).read_candidates()
    return 0 if df is None else df.height


def test_sigterm_during_vllm_sampling_leaves_no_engine_and_the_rerun_completes(tmp_path, tiny_llama_dir):
    """The issue's test: a real in-process engine; SIGTERM once sampling has begun; within 45 s no process of the
    stage is left (before: VLLM::EngineCore and VLLM::Worker kept running); the rerun completes, nothing lost or
    duplicated."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Tell me about the number {i}."} for i in range(24)])
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "prefdata.cli", "generate", str(prompts), "--run", str(run), "--model",
           str(tiny_llama_dir), "-n", "2", "--max-tokens", "400", "--max-model-len", "512", "--batch-size", "2",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and _candidates(run) == 0:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        assert 0 < _candidates(run) < 48, "sampling had not begun, or had already finished"
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert children, "the engine runs in child processes"
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)  # the process only, as `kill -TERM PID` does
        proc.wait(timeout=45)
        left = wait_gone(children, max(0.0, 45 - (time.monotonic() - t0)))
        assert not left, f"processes left 45 s after SIGTERM: {[psutil.Process(p).name() for p in left if psutil.pid_exists(p)]}"
        err = proc.stderr.read()
        assert proc.returncode == 143, err
        assert err.strip().splitlines()[-1].startswith("interrupted by SIGTERM")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = RunDir(run).read_candidates()
    assert before is not None and 0 < before["prompt_id"].n_unique() < 24
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    after = RunDir(run).read_candidates()
    assert after.height == 48 and after["candidate_id"].n_unique() == 48 and after["prompt_id"].n_unique() == 24
    kept = after.join(before.select("candidate_id", "text"), on="candidate_id", suffix="_before")
    assert kept.height == before.height and (kept["text"] == kept["text_before"]).all()


@pytest.mark.slow
def test_sigterm_while_the_engine_starts_leaves_nothing(tmp_path, tiny_llama_dir):
    """SIGTERM before the engine is up: there is no engine object to stop yet, and the main thread may be blocked
    in vLLM's start; within 45 s the process has exited with 143 and none of its processes is left."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello?"}])
    cmd = [sys.executable, "-m", "prefdata.cli", "generate", str(prompts), "--run", str(tmp_path / "run"), "--model",
           str(tiny_llama_dir), "-n", "1", "--max-tokens", "8", "--max-model-len", "512", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        children: list[int] = []
        while time.time() < deadline and proc.poll() is None and len(children) < 2:  # EngineCore and its worker
            children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            time.sleep(0.2)
        assert proc.poll() is None and children, "the engine did not start"
        time.sleep(3)  # inside the engine's start
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=45)
        assert not wait_gone(children, max(0.0, 45 - (time.monotonic() - t0)))
        err = proc.stderr.read()
        assert proc.returncode == 143, err
        assert "interrupted by SIGTERM" in err  # on the terminal, not only in the stage's log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
