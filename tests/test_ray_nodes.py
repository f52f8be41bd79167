"""A node of a (simulated, one-machine) multi-node Ray cluster dies while its actor samples: the job finishes,
the dead node's batches are redone elsewhere, nothing is lost or written twice."""

from __future__ import annotations

import json
import os
import threading
import time

import psutil
import pytest

from prefdata.generate import GenerateConfig
from prefdata.run.interrupts import wait_gone
from prefdata.run.store import RunDir


def _sleeping_actor(sleep_s: float) -> type:
    from prefdata.distributed.generate import SampleActor
    from prefdata.llm.chat import Completion

    class Sleepy:
        def sample(self, conversations, plan, on_done=None, on_tick=None):
            time.sleep(sleep_s)  # a GPU engine's decoding, as far as the scheduler can tell
            return [[[Completion(f"{m[-1]['content']} #{i}", "stop", 1) for i in range(s.n)] for s in plan]
                    for m in conversations]

    class SleepingActor(SampleActor):
        def __init__(self, cfg, shash, label):
            self.cfg, self.shash, self.label, self.sampler = cfg, shash, label, Sleepy()

    return SleepingActor


@pytest.fixture
def two_node_cluster(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from prefdata.distributed.cluster import _reload_auth

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")  # a test cluster bound to this machine
    _reload_auth()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_auth()
        left = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert wait_gone(left, 30) == []


def test_a_node_that_dies_mid_run_loses_nothing(two_node_cluster, tmp_path):
    from prefdata.distributed.generate import sample_on_ray
    from prefdata.generate.config import sampler_hash
    from prefdata.run.prompts import load_prompts

    cluster, workers = two_node_cluster
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(16)))
    cfg = GenerateConfig(prompts=str(prompts), model="m", backend="openai", base_url="http://unused/v1", n=2,
                         batch_size=2, engine="ray", data_parallel_size=2)
    run = RunDir(tmp_path / "run")
    todo = list(load_prompts(cfg.prompts, None, None, None, None).table.iter_rows(named=True))
    stats = {"sampled": 0, "skipped": 0, "cands": 0, "trunc": 0, "tokens": 0, "sample_s": 0.0}

    def kill_a_node() -> None:
        while not list((tmp_path / "run" / "candidates").glob("shard-*.parquet")):
            time.sleep(0.1)
        cluster.remove_node(workers[1], allow_graceful=False)  # its actor dies mid-batch

    killer = threading.Thread(target=kill_a_node, daemon=True)
    killer.start()
    sample_on_ray(run, cfg, todo, sampler_hash(cfg), "m", stats, False, actor=_sleeping_actor(1.0))
    killer.join(timeout=5)
    assert not killer.is_alive()
    df = run.read_candidates()
    assert df is not None and df.height == 32 and df["candidate_id"].n_unique() == 32
    assert df["prompt_id"].n_unique() == 16 and stats["sampled"] == 16
