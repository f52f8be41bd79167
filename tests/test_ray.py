"""`--engine ray` on a real local Ray cluster: the same candidates and rankings as the local path, resume across
engines, a killed driver, an engine that crashes, and nothing left running or written to ~/.ray afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psutil
import pytest

from prefdata.generate import GenerateConfig, generate_run
from prefdata.rank import RankConfig, rank_run
from prefdata.run.interrupts import wait_gone
from prefdata.run.store import RunDir
from tests.helpers import make_candidates_run, make_ref_run

REPO = Path(__file__).resolve().parents[1]
TOKEN_FILE = Path.home() / ".ray" / "auth_token"
QUESTIONS = [f"Say something about number {i}." for i in range(6)]
COLS = ["prompt_id", "candidate_id", "sampler_hash", "kind", "index", "text", "finish_reason", "n_tokens", "model"]


def _ray_procs() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if _is_ray(p)]


def _core_procs() -> set[int]:
    """The cluster itself (GCS and raylet); its worker processes come and go as Ray reaps idle ones."""
    out = set()
    for p in _ray_procs():
        try:
            if any(k in " ".join(p.cmdline()) for k in ("raylet/raylet", "gcs/gcs_server")):
                out.add(p.pid)
        except psutil.Error:
            pass
    return out


def _is_ray(p: psutil.Process) -> bool:
    try:
        return any(k in " ".join(p.cmdline()) for k in ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard"))
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module, started the way a command starts its own; stopped with nothing left over."""
    from prefdata.distributed.cluster import ray_cluster

    had_token = TOKEN_FILE.exists()
    with ray_cluster(num_cpus=2) as cluster:
        assert cluster.started_here and cluster.cpus == 2
        yield cluster
    left = wait_gone([p.pid for p in _ray_procs()], 20)
    assert not left, f"Ray processes left running: {left}"
    assert had_token or not TOKEN_FILE.exists(), "the local Ray wrote ~/.ray/auth_token"


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    return p


def _cfg(prompts: Path, model: Path, **kw) -> GenerateConfig:
    base = {"prompts": str(prompts), "model": str(model), "backend": "hf", "n": 1, "temperature": 0.0, "greedy": True,
            "max_tokens": 6, "batch_size": 2, "dtype": "float32"}
    return GenerateConfig(**(base | kw))


def _cands(path: Path) -> pl.DataFrame:
    df = RunDir(path).read_candidates()
    assert df is not None
    return df.select(COLS).sort("candidate_id")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, prompts_file, tiny_llama_dir) -> Path:
    path = tmp_path_factory.mktemp("local") / "run"
    generate_run(RunDir(path), _cfg(prompts_file, tiny_llama_dir), progress=False)
    return path


def test_generate_on_ray_matches_the_local_run(ray_local, local_run, prompts_file, tiny_llama_dir, tmp_path):
    s = generate_run(RunDir(tmp_path / "run"), _cfg(prompts_file, tiny_llama_dir, engine="ray", data_parallel_size=2),
                     progress=False)
    assert s.prompts_sampled == len(QUESTIONS) and s.candidates == 2 * len(QUESTIONS)
    ray_df, local_df = _cands(tmp_path / "run"), _cands(local_run)
    assert ray_df.equals(local_df)
    assert ray_df["candidate_id"].n_unique() == ray_df.height
    shards = list((tmp_path / "run" / "candidates").glob("shard-*.parquet"))
    assert len(shards) == 3  # one per batch of 2 prompts, written by the driver
    (slot,) = RunDir(tmp_path / "run").read_meta()["stages"]["generate"].values()
    assert slot["dtype"] == "float32"  # what the actors reported (tests/test_ray_actors.py: not the driver's guess)


def test_local_and_ray_runs_resume_each_other(ray_local, local_run, prompts_file, tiny_llama_dir, tmp_path):
    run = RunDir(tmp_path / "run")
    first = generate_run(run, _cfg(prompts_file, tiny_llama_dir, limit=2), progress=False)
    assert first.prompts_sampled == 2
    second = generate_run(run, _cfg(prompts_file, tiny_llama_dir, limit=4, engine="ray"), progress=False)
    assert (second.prompts_done_before, second.prompts_sampled) == (2, 2)
    assert second.sampler_hash == first.sampler_hash  # the engine is not part of the sampler hash
    third = generate_run(run, _cfg(prompts_file, tiny_llama_dir), progress=False)
    assert (third.prompts_done_before, third.prompts_sampled) == (4, 2)
    assert _cands(run.path).equals(_cands(local_run))


def _start_cli_generate(run: Path, prompts_file: Path, model: Path) -> tuple[subprocess.Popen, list[int]]:
    """`prefdata generate --engine ray` in a subprocess that starts its own Ray; returns once a shard is written,
    with the process tree (its Ray included) as it is then."""
    cmd = [sys.executable, "-m", "prefdata.cli", "generate", str(prompts_file), "--run", str(run), "--model",
           str(model), "--backend", "hf", "-n", "1", "--temperature", "0", "--greedy", "--max-tokens", "6",
           "--batch-size", "1", "--dtype", "float32", "--engine", "ray", "--dp", "1"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(k, None)  # the command starts its own Ray, as a user's would
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((run / "candidates").glob("shard-*.parquet")):  # finished shards only: a hidden .tmp- file is a write still in flight
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no shard within 240 s"
        time.sleep(0.2)
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert any(_is_ray(psutil.Process(p)) for p in tree if psutil.pid_exists(p))
    return proc, tree


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_driver_leaves_no_ray_and_the_rerun_loses_nothing(ray_local, local_run, prompts_file, tiny_llama_dir,
                                                                   tmp_path, sig):
    run = tmp_path / "run"
    proc, tree = _start_cli_generate(run, prompts_file, tiny_llama_dir)
    os.kill(proc.pid, sig)
    code = proc.wait(timeout=60)
    assert code == (-9 if sig == signal.SIGKILL else 128 + signal.SIGTERM), (code, proc.stderr.read() if proc.stderr else "")
    assert wait_gone(tree, 30) == [], "processes of the killed driver's Ray still run"
    done = RunDir(run).read_candidates()
    assert done is not None and 0 < done["prompt_id"].n_unique() < len(QUESTIONS)
    s = generate_run(RunDir(run), _cfg(prompts_file, tiny_llama_dir, engine="ray"), progress=False)
    assert s.prompts_done_before == done["prompt_id"].n_unique()
    assert _cands(run).equals(_cands(local_run))  # nothing lost, nothing twice
    assert not TOKEN_FILE.exists() or TOKEN_FILE.stat().st_mtime < time.time() - 3600


def test_rank_with_a_reward_model_on_ray_matches_local(ray_local, tiny_rm_dir, tmp_path):
    texts = [["a short one", "a much longer answer here", "mid answer"], ["yes", "no", "maybe so"], ["x", "y z", "w"]]
    local, _ = make_candidates_run(tmp_path / "local", texts)
    on_ray, _ = make_candidates_run(tmp_path / "ray", texts)
    cfg = {"judge": str(tiny_rm_dir), "rm_backend": "hf", "dtype": "float32", "progress": False}
    a = rank_run(local, RankConfig(**cfg))
    b = rank_run(on_ray, RankConfig(**cfg, engine="ray", dp=2))
    assert a.record["judge_hash"] == b.record["judge_hash"]
    jh = a.record["judge_hash"]
    cols = ["prompt_id", "a_id", "score"]
    ja = local.read_judgments(jh, columns=cols).sort("a_id")
    jb = on_ray.read_judgments(jh, columns=cols).sort("a_id")
    assert ja.height == 9 and ja["score"].to_list() == pytest.approx(jb["score"].to_list(), abs=1e-5)
    ra = local.read_rankings(jh).sort("prompt_id")
    rb = on_ray.read_rankings(jh).sort("prompt_id")
    assert ra.select("candidate_ids", "ranks").equals(rb.select("candidate_ids", "ranks"))


CRASHING_VERIFIER = '''
import os

def check(messages, text, reference):
    if text == "crash" and os.path.exists(os.path.join(os.path.dirname(__file__), "crash-now")):
        os._exit(7)  # the engine process dies, as a segfault or an OOM kill would end it
    return float(text == reference)
'''


def test_an_engine_that_crashes_fails_its_batch_after_bounded_retries_and_the_rerun_retries_it(ray_local, tmp_path):
    fn = tmp_path / "verifier.py"
    fn.write_text(CRASHING_VERIFIER)
    marker = tmp_path / "crash-now"
    marker.write_text("1")
    items = [("q0", "4", ["4", "5"]), ("q1", "7", ["crash", "7"]), ("q2", "1", ["1", "2"]), ("q3", "9", ["9", "8"])]
    run, _ = make_ref_run(tmp_path / "run", items)
    cfg = RankConfig(judge=f"python:{fn}:check", engine="ray", dp=2, batch_size=2, progress=False)
    t0 = time.monotonic()
    first = rank_run(run, cfg)
    assert time.monotonic() - t0 < 120  # bounded: not Ray Data's endless restarts
    assert first.calls_to_retry >= 1
    fails = run.read_judgments(first.record["judge_hash"], columns=["a_id", "verdict", "error"]).filter(pl.col("verdict") == "fail")
    assert fails.height >= 1 and all("died" in e for e in fails["error"].to_list())
    answered = run.read_judgments(first.record["judge_hash"], columns=["verdict"]).filter(pl.col("verdict") != "fail").height
    assert answered >= 8 - 2 * 2  # the other actor's batches completed
    marker.unlink()
    second = rank_run(run, cfg)
    assert second.calls_to_retry == 0
    assert second.record["judge_calls_new"] == fails.height  # only the failed calls are asked again


def test_a_judge_behind_base_url_on_ray_is_refused_with_one_line(tmp_path):
    run, _ = make_candidates_run(tmp_path / "run", [["a", "b"]])
    from prefdata.errors import PrefdataError

    with pytest.raises(PrefdataError, match="already remote"):
        rank_run(run, RankConfig(judge="verdict-only", base_url=["http://127.0.0.1:1/v1"], judge_model="j",
                                 engine="ray", progress=False))


@pytest.mark.slow
def test_an_llm_judge_in_ray_actors_gives_the_local_verdicts(ray_local, tiny_llama_dir, tmp_path):
    texts = [["red", "blue", "green"], ["one", "two", "three"]]
    local, _ = make_candidates_run(tmp_path / "local", texts)
    on_ray, _ = make_candidates_run(tmp_path / "ray", texts)
    cfg = {"judge": "verdict-only", "judge_model": str(tiny_llama_dir), "max_model_len": 512, "progress": False}
    since = time.time()
    a = rank_run(local, RankConfig(**cfg))
    local_engine = set(_vllm_procs(since))  # the local judge's engine lives until this process ends, as in the CLI
    b = rank_run(on_ray, RankConfig(**cfg, engine="ray", dp=1))
    assert a.record["judge_hash"] == b.record["judge_hash"]
    cols = ["prompt_id", "a_id", "b_id", "verdict", "raw"]
    ja = local.read_judgments(a.record["judge_hash"], columns=cols).sort(["a_id", "b_id"])
    jb = on_ray.read_judgments(b.record["judge_hash"], columns=cols).sort(["a_id", "b_id"])
    assert ja.height >= 4 and ja.equals(jb)  # the same calls over the rounds, the same raw outputs (greedy)
    left = wait_gone([p for p in _vllm_procs(since) if p not in local_engine], 30)
    assert left == [], "the judge actor's vLLM engine outlived the rank"


def _crashing_actor(marker: str) -> type:
    """A sample actor whose engine process dies on the batch holding the prompt "crash" while `marker` exists,
    and otherwise answers at once (pickled by value with its closure)."""
    from prefdata.distributed.generate import SampleActor
    from prefdata.llm.chat import Completion

    class Instant:
        def sample(self, conversations, plan, on_done=None, on_tick=None):
            if any(m[-1]["content"] == "crash" for m in conversations) and os.path.exists(marker):
                os._exit(9)
            return [[[Completion("ok", "stop", 1) for _ in range(s.n)] for s in plan] for _ in conversations]

    class Crashing(SampleActor):
        def __init__(self, cfg, shash, label):
            self.cfg, self.shash, self.label, self.sampler = cfg, shash, label, Instant()

    return Crashing


def test_a_generate_batch_that_kills_its_engine_fails_alone_and_the_rerun_does_only_it(ray_local, tmp_path):
    from prefdata.distributed.generate import sample_on_ray
    from prefdata.errors import PrefdataError
    from prefdata.generate.config import sampler_hash
    from prefdata.run.prompts import load_prompts

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ["a", "b", "crash", "d", "e", "f"]))
    marker = tmp_path / "crash-now"
    marker.write_text("1")
    cfg = GenerateConfig(prompts=str(prompts), model="m", backend="openai", base_url="http://unused/v1", n=2,
                         batch_size=2, engine="ray", data_parallel_size=2)
    run = RunDir(tmp_path / "run")
    todo = list(load_prompts(cfg.prompts, None, None, None, None).table.iter_rows(named=True))
    stats = {"sampled": 0, "skipped": 0, "cands": 0, "trunc": 0, "tokens": 0, "sample_s": 0.0}
    t0 = time.monotonic()
    with pytest.raises(PrefdataError, match=r"^1 batch\(es\) failed.*died 3 times.*two rounds"):
        sample_on_ray(run, cfg, todo, sampler_hash(cfg), "m", stats, False, actor=_crashing_actor(str(marker)))
    assert time.monotonic() - t0 < 120
    done = run.read_candidates()
    assert done is not None and done["prompt_id"].n_unique() == 4 and stats["sampled"] == 4  # the other batches
    marker.unlink()
    left = [r for r in todo if r["prompt_id"] not in set(done["prompt_id"].to_list())]
    assert len(left) == 2
    sample_on_ray(run, cfg, left, sampler_hash(cfg), "m", stats, False, actor=_crashing_actor(str(marker)))
    after = run.read_candidates()
    assert after is not None and after.height == 12 and after["candidate_id"].n_unique() == 12


def test_eval_on_ray_gives_the_local_result(ray_local, tiny_llama_dir, tmp_path):
    from prefdata.eval.run import EvalConfig, eval_run

    prompts = tmp_path / "arith.jsonl"
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b), "gold": f"The answer is {a + b}."} for a, b in
            [(1, 2), (3, 4), (5, 6), (7, 8)]]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"model": str(tiny_llama_dir), "baseline": "gold", "prompts": str(prompts), "judge": "verify:number",
            "reference_field": "answer", "backend": "hf", "max_tokens": 6, "generate": {"dtype": "float32", "batch_size": 2}}
    local = eval_run(RunDir(tmp_path / "local"), EvalConfig(**base), progress=False)
    on_ray = eval_run(RunDir(tmp_path / "ray"), EvalConfig(**base, engine="ray"), progress=False)
    keys = ("prompts", "accuracy", "baseline_accuracy", "win_rate", "ties", "model_sampler", "judge_hash")
    assert {k: on_ray[k] for k in keys} == {k: local[k] for k in keys}
    assert local["baseline_accuracy"] == 1.0
    assert _cands(tmp_path / "ray").equals(_cands(tmp_path / "local"))


def _vllm_procs(since: float) -> list[int]:
    """vLLM engine processes started since `since` anywhere on the machine (an orphan is no one's child; the
    engine lock keeps other sessions' engines out while this test runs)."""
    out = []
    for p in psutil.process_iter(["name", "cmdline", "create_time"]):
        try:
            if p.info["create_time"] >= since and "VLLM" in (p.info["name"] or "") + " ".join(p.info["cmdline"] or []):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


@pytest.mark.slow
def test_a_vllm_cpu_engine_in_an_actor_samples_as_the_local_engine_and_stops(ray_local, prompts_file, tiny_llama_dir,
                                                                             tmp_path):
    cfg = {"backend": "vllm", "max_model_len": 512, "limit": 4, "dtype": "auto"}
    since = time.time()
    local = generate_run(RunDir(tmp_path / "local"), _cfg(prompts_file, tiny_llama_dir, **cfg), progress=False)
    on_ray = generate_run(RunDir(tmp_path / "ray"), _cfg(prompts_file, tiny_llama_dir, engine="ray", **cfg), progress=False)
    assert on_ray.sampler_hash == local.sampler_hash and on_ray.candidates == local.candidates == 8
    assert _cands(tmp_path / "ray").equals(_cands(tmp_path / "local"))
    assert wait_gone(_vllm_procs(since), 30) == [], "the actor's vLLM engine outlived the job"


def test_an_unreachable_ray_address_is_one_error_line(prompts_file, tiny_llama_dir, tmp_path):
    cmd = [sys.executable, "-m", "prefdata.cli", "generate", str(prompts_file), "--run", str(tmp_path / "run"),
           "--model", str(tiny_llama_dir), "--backend", "hf", "--engine", "ray", "--ray-address", "127.0.0.1:1"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and time.monotonic() - t0 < 60
    assert "error: cannot reach the Ray cluster at 127.0.0.1:1" in p.stderr and "Traceback" not in p.stderr
    assert not list((tmp_path / "run").glob("candidates/*.parquet"))


def test_the_address_file_a_killed_ray_left_is_no_cluster(tmp_path, monkeypatch):
    """`ray start` writes its address to RAY_TMPDIR/ray/ray_current_cluster; a Ray killed with -9 leaves the file.
    A command then starts its own Ray instead of failing on a dead address; a live address is still joined."""
    import socket

    from prefdata.distributed.cluster import _running_local_cluster

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    with socket.socket() as live:
        live.bind(("", 0))  # Ray rewrites 127.0.0.1 to this host's address
        live.listen()
        port = live.getsockname()[1]
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        found = _running_local_cluster()
        assert found is not None and found.endswith(f":{port}")
    assert _running_local_cluster() is None  # the same address, now closed


def test_a_command_joins_a_running_cluster_and_leaves_it_running(ray_local, local_run, prompts_file, tiny_llama_dir,
                                                                 tmp_path):
    import ray

    address = ray.get_runtime_context().gcs_address
    ours = _core_procs()
    assert ours, "the test cluster's GCS and raylet were not found"
    cmd = [sys.executable, "-m", "prefdata.cli", "generate", str(prompts_file), "--run", str(tmp_path / "run"),
           "--model", str(tiny_llama_dir), "--backend", "hf", "-n", "1", "--temperature", "0", "--greedy",
           "--max-tokens", "6", "--batch-size", "2", "--dtype", "float32", "--engine", "ray", "--ray-address", address]
    env = dict(os.environ, PYTHONPATH=str(REPO))  # with this cluster's token (RAY_AUTH_TOKEN), as a user's shell has
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"on the Ray cluster at {address}" in p.stderr
    assert _cands(tmp_path / "run").equals(_cands(local_run))
    assert ray.is_initialized() and ours <= _core_procs()  # the cluster it joined still runs
