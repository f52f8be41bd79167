"""The cost of `--engine ray` against the local path on one machine (issue 22).

1. The same generate (transformers, a tiny random Llama, greedy) locally and through a local Ray with one actor:
   wall time, with Ray's start (`ray.init`) counted apart.
2. The per-batch cost of the Ray path: an instant sampler (no model), many batches, one actor.
3. Scaling in actors with a sampler that sleeps per batch (a stand-in for a GPU engine, so the orchestration is
   measured, not this CPU): 1, 2 and 4 actors on a local Ray given 4 logical CPUs; `--nodes K` on a simulated
   cluster of K nodes, up to 2K actors; `--nodes K --judge-rounds R` the same for an LLM pairwise judge's rounds.

    PYTHONPATH=. python bench/bench_ray.py [--prompts 32] [--max-tokens 32] [--sleep 1.0] [--batches 16]

4. `--long SECONDS`: the target's job, measured whole: SECONDS of sampling (the sleeping sampler, `--sleep` per
   batch) through the local loop and through a Ray the command starts (`ray.init`, the actor's start, every
   batch), one engine each; the overhead is the difference of the two walls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefdata.distributed.cluster import ray_cluster
from prefdata.distributed.generate import SampleActor, sample_on_ray
from prefdata.generate import GenerateConfig, generate_run
from prefdata.generate.config import sampler_hash
from prefdata.llm.chat import Completion
from prefdata.run.prompts import load_prompts
from prefdata.run.store import RunDir


class InstantSampler:
    """Answers at once (or after `sleep_s` per batch): what remains is prefdata's and Ray's own cost."""

    name = "instant"

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s

    def sample(self, conversations: list[Any], plan: list[Any], on_done: Any = None, on_tick: Any = None) -> list[list[list[Completion]]]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return [[[Completion(f"answer {i}", "stop", 2) for i in range(s.n)] for s in plan] for _ in conversations]


def instant_actor(sleep_s: float) -> type:
    """An actor class whose sampler answers after `sleep_s` per batch (pickled by value with its closure)."""

    class InstantActor(SampleActor):
        def __init__(self, cfg: GenerateConfig, shash: str, label: str) -> None:
            self.cfg, self.shash, self.label = cfg, shash, label
            self.sampler = InstantSampler(sleep_s)

    return InstantActor


def _prompts(n: int, folder: Path) -> Path:
    p = folder / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Write one sentence about the number {i}."}) + "\n" for i in range(n)))
    return p


def _orchestration(prompts: Path, folder: Path, batches: int, batch_size: int, sleep_s: float, actors: int
                   ) -> tuple[float, float]:  # fmt: skip
    """Seconds for `batches` batches through sample_on_ray with the instant/sleeping actor (Ray already up), and
    the span from the first returned batch to the last (the steady state, actor starts left out)."""
    cfg = GenerateConfig(prompts=str(prompts), model="bench", backend="openai", base_url="http://unused/v1", n=1,
                         batch_size=batch_size, limit=batches * batch_size, engine="ray", data_parallel_size=actors)
    run = RunDir(folder / f"orch-{actors}-{sleep_s}-{time.monotonic_ns()}")
    pset = load_prompts(cfg.prompts, None, None, None, cfg.limit)
    todo = list(pset.table.iter_rows(named=True))
    stats: dict[str, float] = {"sampled": 0, "skipped": 0, "cands": 0, "trunc": 0, "tokens": 0, "sample_s": 0.0}
    t0 = time.perf_counter()
    sample_on_ray(run, cfg, todo, sampler_hash(cfg), "bench", stats, progress=False, actor=instant_actor(sleep_s))
    wall = time.perf_counter() - t0
    assert stats["sampled"] == len(todo), stats
    return wall, stats["ray_last_batch_at"] - stats["ray_first_batch_at"]


@contextlib.contextmanager
def _simulated_cluster(nodes: int) -> Iterator[Path]:
    """A simulated multi-node cluster (`ray.cluster_utils.Cluster`: a head with no CPUs and `nodes` worker nodes
    of 2 logical CPUs each), connected; yields a temp folder."""
    import os

    import ray
    from ray.cluster_utils import Cluster

    from prefdata.distributed.cluster import _reload_auth

    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")  # bound to this machine only
    _reload_auth()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-nodes-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield tmp
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _multinode(nodes: int, batches: int, batch_size: int, sleep_s: float) -> None:
    """Scaling in actors on a simulated multi-node cluster, the sleeping sampler, 1, 2, 4 ... 2*nodes actors."""
    with _simulated_cluster(nodes) as tmp:
        prompts = _prompts(batches * batch_size, tmp)
        ks = [k for k in (1, 2, 4, 8, 16) if k <= 2 * nodes]
        spans = {k: _orchestration(prompts, tmp, batches, batch_size, sleep_s, k) for k in ks}
        print(json.dumps({
            "nodes": nodes, "cpus_per_node": 2, "batches": batches, "sleep_s_per_batch": sleep_s,
            "wall_s": {k: round(v[0], 2) for k, v in spans.items()},
            "span_s": {k: round(v[1], 2) for k, v in spans.items()},
            "ideal_span_s": {k: sleep_s * (-(-batches // k) - 1) for k in ks},
            "span_speedup_vs_1": {k: round(spans[1][1] / v[1], 2) for k, v in spans.items()},
        }, indent=1))


def sleeping_judge_actor(sleep_s: float) -> type:
    """A judge actor whose pairwise judge prefers the higher `q=` after sleeping `sleep_s` per round (a stand-in
    for an LLM judge engine answering a round in one batch). Pickled by value with its closure."""
    from prefdata.distributed.score import JudgeActor
    from prefdata.judges.verdict import Verdict

    class Sleeping:
        def config(self) -> dict[str, object]:
            return {"kind": "sleeping-oracle"}

        def judge(self, requests: list[Any]) -> list[Any]:
            time.sleep(sleep_s)
            out = []
            for r in requests:
                qa, qb = (int(c.text.split("q=")[1]) for c in (r.first, r.second))
                out.append(Verdict.from_slot(r, "a" if qa > qb else "b" if qb > qa else "tie"))
            return out

    class SleepingJudgeActor(JudgeActor):
        def __init__(self, cfg: Any, n_items: int | None) -> None:
            self.judge = Sleeping()

    return SleepingJudgeActor


def _multinode_judge(nodes: int, rounds: int, sleep_s: float) -> None:
    """An LLM pairwise judge's rounds on 1, 2, 4 ... 2*nodes judge actors of a simulated cluster: `rounds`
    prompts of 4 candidates, round robin in both orders (12 calls, one round per prompt), each round answered
    after `sleep_s`. The time is the rank itself (the actors already up): ideally sleep x ceil(rounds / k)."""
    from prefdata.distributed.score import ray_judge
    from prefdata.rank import RankConfig, rank_run
    from tests.helpers import make_candidates_run

    with _simulated_cluster(nodes) as tmp:
        texts = [[f"answer {i} q={q}" for q in (3, 1, 4, 2)] for i in range(rounds)]
        ks = [k for k in (1, 2, 4, 8, 16) if k <= 2 * nodes]
        walls = {}
        for k in ks:
            run, _ = make_candidates_run(tmp / f"judge-{k}", texts)
            cfg = RankConfig(judge="oracle", strategy="round-robin", batch_size=12, progress=False, engine="ray", dp=k)
            with ray_judge(cfg, None, progress=False, actor=sleeping_judge_actor(sleep_s)) as rj:
                t0 = time.perf_counter()
                s = rank_run(run, cfg, judge=rj)
                walls[k] = time.perf_counter() - t0
            assert s.record["judge_calls_new"] == 12 * rounds and s.record["failures"] == 0, s.record
        print(json.dumps({
            "nodes": nodes, "cpus_per_node": 2, "rounds": rounds, "calls_per_round": 12, "sleep_s_per_round": sleep_s,
            "rank_wall_s": {k: round(v, 2) for k, v in walls.items()},
            "ideal_s": {k: sleep_s * -(-rounds // k) for k in ks},
            "speedup_vs_1": {k: round(walls[1] / v, 2) for k, v in walls.items()},
        }, indent=1))


def _long(seconds: float, sleep_s: float, batch_size: int) -> None:
    """A SECONDS-long sampling job (sleeping sampler) through the local loop, then through `--engine ray` with a
    Ray started for it and one actor: both walls, whole, and the overhead of the Ray path."""
    from prefdata.generate.run import _sample_all

    batches = max(1, round(seconds / sleep_s))
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-long-"))
    try:
        prompts = _prompts(batches * batch_size, tmp)
        cfg = GenerateConfig(prompts=str(prompts), model="bench", backend="openai", base_url="http://unused/v1", n=1,
                             batch_size=batch_size, engine="ray", data_parallel_size=1)
        todo = list(load_prompts(cfg.prompts, None, None, None, None).table.iter_rows(named=True))
        walls = {}
        for where in ("local", "ray"):
            stats: dict[str, float] = {"sampled": 0, "skipped": 0, "cands": 0, "trunc": 0, "tokens": 0, "sample_s": 0.0}
            run = RunDir(tmp / where)
            t0 = time.perf_counter()
            if where == "local":
                _sample_all(run, cfg, InstantSampler(sleep_s), todo, sampler_hash(cfg), stats, progress=False)  # type: ignore[arg-type]
            else:
                with ray_cluster():
                    sample_on_ray(run, cfg, todo, sampler_hash(cfg), "bench", stats, progress=False, actor=instant_actor(sleep_s))
            walls[where] = time.perf_counter() - t0
            done = run.read_candidates()
            assert stats["sampled"] == len(todo) and done is not None and done.height == len(todo), stats
        print(json.dumps({"batches": batches, "batch_size": batch_size, "sleep_s_per_batch": sleep_s,
                          "local_wall_s": round(walls["local"], 2), "ray_wall_s": round(walls["ray"], 2),
                          "ray_overhead_s": round(walls["ray"] - walls["local"], 2),
                          "ray_overhead_pct": round(100 * (walls["ray"] - walls["local"]) / walls["local"], 2)}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--model", help="a causal LM folder; default: a tiny random Llama built with the demo tokenizer")
    ap.add_argument("--nodes", type=int, default=0,
                    help="only the scaling on a simulated cluster of this many 2-CPU nodes (1 to 2*nodes actors)")
    ap.add_argument("--judge-rounds", type=int, default=0,
                    help="with --nodes: an LLM pairwise judge's scaling instead, this many rounds (--sleep each)")
    ap.add_argument("--long", type=float, default=0.0,
                    help="only a job of this many seconds of sampling, local against a Ray started for it")
    args = ap.parse_args()
    if args.long:
        _long(args.long, args.sleep, args.batch_size)
        return
    if args.nodes and args.judge_rounds:
        _multinode_judge(args.nodes, args.judge_rounds, args.sleep)
        return
    if args.nodes:
        _multinode(args.nodes, args.batches, args.batch_size, args.sleep)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        model = args.model
        if model is None:
            from prefdata.models import demo_model_dir
            from tests.helpers import build_tiny_llama

            model = str(build_tiny_llama(tmp / "tiny", demo_model_dir()))
        prompts = _prompts(max(args.prompts, args.batches * args.batch_size), tmp)
        cfg = {"prompts": str(prompts), "model": model, "backend": "hf", "n": 1, "temperature": 0.0,
               "max_tokens": args.max_tokens, "batch_size": args.batch_size, "limit": args.prompts}
        t0 = time.perf_counter()
        local = generate_run(RunDir(tmp / "local"), GenerateConfig(**cfg), progress=False)
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ray_cluster(num_cpus=4) as cluster:
            t_init = time.perf_counter() - t0
            t1 = time.perf_counter()
            on_ray = generate_run(RunDir(tmp / "ray"), GenerateConfig(**cfg, engine="ray", data_parallel_size=1), progress=False)
            t_ray = time.perf_counter() - t1
            same = (RunDir(tmp / "local").read_candidates().sort("candidate_id")["text"].to_list()  # type: ignore[union-attr]
                    == RunDir(tmp / "ray").read_candidates().sort("candidate_id")["text"].to_list())  # type: ignore[union-attr]
            ks = (1, 2, 4)
            instant = {k: _orchestration(prompts, tmp, args.batches, args.batch_size, 0.0, k) for k in ks}
            scaling = {k: _orchestration(prompts, tmp, args.batches, args.batch_size, args.sleep, k) for k in ks}
        out = {
            "cluster": {"cpus": cluster.cpus, "nodes": cluster.nodes},
            "generate_local_s": round(t_local, 2), "generate_ray_s": round(t_ray, 2), "ray_init_s": round(t_init, 2),
            "ray_overhead_pct_without_init": round(100 * (t_ray - t_local) / t_local, 1),
            "same_texts": same, "candidates": [local.candidates, on_ray.candidates],
            "batches": args.batches, "instant_wall_s": {k: round(v[0], 2) for k, v in instant.items()},
            "per_batch_ms_1_actor_steady": round(1000 * instant[1][1] / max(1, args.batches - 1), 1),
            "sleep_s_per_batch": args.sleep,
            "sleeping_wall_s": {k: round(v[0], 2) for k, v in scaling.items()},
            # first returned batch to last: ideally sleep x (ceil(batches / k) - 1), the actors' starts left out
            "sleeping_span_s": {k: round(v[1], 2) for k, v in scaling.items()},
            "ideal_span_s": {k: args.sleep * (-(-args.batches // k) - 1) for k in ks},
            "span_speedup_vs_1": {k: round(scaling[1][1] / v[1], 2) for k, v in scaling.items()},
        }
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
