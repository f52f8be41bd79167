"""What the Ray actors decide and do: a pairwise judge's rounds go whole to a free actor (no barrier across the
pool), with the local judge's rankings, and an actor that dies fails only its round's calls, which a rerun
answers; the dtype in run.json is the one the actors computed in, not the driver's guess."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import polars as pl
import pytest

from prefdata.distributed.generate import SampleActor
from prefdata.distributed.score import JudgeActor, ray_judge
from prefdata.generate import GenerateConfig
from prefdata.generate.config import sampler_hash
from prefdata.rank import RankConfig, rank_run
from prefdata.run.prompts import load_prompts
from prefdata.run.store import RunDir
from tests.helpers import OrderJudge, make_candidates_run, quality_texts

pytestmark = pytest.mark.slow  # a local Ray and its actors: tens of seconds

TEXTS = [quality_texts([3, 1, 4, 2]), quality_texts([2, 5, 1, 3]), quality_texts([1, 2, 3, 4]), quality_texts([4, 3, 2, 1])] * 2


@pytest.fixture(scope="module")
def ray_local():
    from prefdata.distributed.cluster import ray_cluster

    with ray_cluster(num_cpus=2) as cluster:
        yield cluster


def _oracle_actor(folder: Path, slow_s: float = 0.0, die_on: frozenset[str] = frozenset()) -> type:
    """A judge actor whose judge prefers the higher `q=`; the first actor to start sleeps `slow_s` per round; any
    actor exits its process on a round that compares the two candidates `die_on` while folder/die exists. Each
    verdict's raw text names the process that answered it. Pickled by value with its closure."""
    from prefdata.judges.verdict import Verdict

    class Oracle:
        def __init__(self, slow: bool) -> None:
            self.slow = slow

        def config(self) -> dict[str, object]:
            return {"kind": "oracle-order", "noise": 0.0}  # OrderJudge's: the same judge hash as the local run

        def judge(self, requests):
            import time

            if die_on and any({r.first.id, r.second.id} == die_on for r in requests) and (folder / "die").exists():
                os._exit(3)
            if self.slow:
                time.sleep(slow_s)
            out = []
            for r in requests:
                qa, qb = (int(c.text.split("q=")[1].split()[0]) for c in (r.first, r.second))
                slot = "a" if qa > qb else "b" if qb > qa else "tie"
                out.append(Verdict.from_slot(r, slot, raw=f"pid={os.getpid()} slow={self.slow}"))
            return out

    class OracleActor(JudgeActor):
        def __init__(self, cfg, n_items):
            try:
                os.close(os.open(folder / "slow-taken", os.O_CREAT | os.O_EXCL))
                slow = True
            except FileExistsError:
                slow = False
            self.judge = Oracle(slow)

    return OracleActor


def _rank_on_ray(run, cfg: RankConfig, actor: type):
    with ray_judge(cfg, None, progress=False, actor=actor) as rj:
        return rank_run(run, cfg, judge=rj)


def _cfg(**kw) -> RankConfig:
    return RankConfig(**({"judge": "oracle", "strategy": "round-robin", "batch_size": 4, "progress": False,
                          "engine": "ray", "dp": 2} | kw))  # fmt: skip


def test_rounds_go_whole_to_free_actors_and_the_rankings_are_the_local_ones(ray_local, tmp_path):
    local, _ = make_candidates_run(tmp_path / "local", TEXTS)
    on_ray, _ = make_candidates_run(tmp_path / "ray", TEXTS)
    cfg = _cfg()
    a = rank_run(local, dataclasses.replace(cfg, engine="local"), judge=OrderJudge())
    b = _rank_on_ray(on_ray, cfg, _oracle_actor(tmp_path, slow_s=1.0))
    jh = a.record["judge_hash"]
    assert b.record["judge_hash"] == jh
    ra, rb = (r.read_rankings(jh).sort("prompt_id").select("candidate_ids", "ranks") for r in (local, on_ray))
    assert ra.equals(rb)
    shards = sorted((on_ray.path / "judgments" / jh).glob("shard-*.parquet"))
    rounds = [pl.read_parquet(p, columns=["raw"])["raw"].unique().to_list() for p in shards]
    # round robin asks a prompt's 12 calls at once, so each round of --batch-size 4 is one prompt's calls
    assert len(rounds) == len(TEXTS) and all(len(r) == 1 for r in rounds), rounds  # one actor per round
    per_actor = pl.Series("raw", [r[0] for r in rounds]).value_counts()
    assert per_actor.height == 2, per_actor  # both actors judged
    slow = per_actor.filter(pl.col("raw").str.contains("slow=True"))["count"].item()
    fast = per_actor.filter(pl.col("raw").str.contains("slow=False"))["count"].item()
    assert fast > slow, per_actor  # the fast actor took the rounds the slow one was still busy with


def test_an_actor_that_dies_fails_its_round_only_and_the_rerun_answers_it(ray_local, tmp_path):
    run, pids = make_candidates_run(tmp_path / "run", TEXTS)
    cands = run.read_candidates()
    assert cands is not None
    victim = frozenset(cands.filter(pl.col("prompt_id") == pids[1])["candidate_id"].to_list()[:2])
    (tmp_path / "die").write_text("1")
    first = _rank_on_ray(run, _cfg(), _oracle_actor(tmp_path, die_on=victim))
    counts = first.record
    assert counts["call_failures_new"] == 12, counts  # the dead actor's round (one prompt's 12 calls), no more
    jh = first.record["judge_hash"]
    failed = run.read_judgments(jh).filter(pl.col("verdict") == "fail")
    assert failed["error"].str.contains("engine actor died").all()
    (tmp_path / "die").unlink()
    second = _rank_on_ray(run, _cfg(), _oracle_actor(tmp_path))
    assert second.record["judge_calls_new"] == counts["call_failures_new"]  # only the failed calls again
    local, _ = make_candidates_run(tmp_path / "local", TEXTS)
    a = rank_run(local, dataclasses.replace(_cfg(), engine="local"), judge=OrderJudge())
    assert local.read_rankings(jh).sort("prompt_id").select("ranks").equals(run.read_rankings(jh).sort("prompt_id").select("ranks"))
    assert a.record["judge_hash"] == jh


def test_on_one_actor_a_round_that_kills_it_fails_alone(ray_local, tmp_path):
    """With --dp 1 the actor a round kills past its restarts is replaced: only that round fails. (Before, the pool
    was left empty and every round after it failed with "no engine actor left", in this run and in each rerun.)"""
    run, pids = make_candidates_run(tmp_path / "run", TEXTS)
    cands = run.read_candidates()
    assert cands is not None
    victim = frozenset(cands.filter(pl.col("prompt_id") == pids[0])["candidate_id"].to_list()[:2])
    (tmp_path / "die").write_text("1")
    first = _rank_on_ray(run, _cfg(dp=1), _oracle_actor(tmp_path, die_on=victim))
    assert first.record["call_failures_new"] == 12, first.record  # the first prompt's round, no more
    failed = run.read_judgments(first.record["judge_hash"]).filter(pl.col("verdict") == "fail")
    assert failed["error"].str.contains("engine actor died").all()


def _half_actor() -> type:
    """A sample actor that answers at once and computes in float16, which this CPU driver would never choose."""
    from prefdata.llm.chat import Completion

    class Instant:
        def sample(self, conversations, plan, on_done=None, on_tick=None):
            return [[[Completion("ok", "stop", 1) for _ in range(s.n)] for s in plan] for _ in conversations]

    class Half(SampleActor):
        def __init__(self, cfg, shash, label):
            self.cfg, self.shash, self.label, self.sampler = cfg, shash, label, Instant()

        def compute_dtype(self):
            return "float16"

    return Half


def test_run_json_records_the_dtype_the_actors_computed_in(ray_local, tmp_path):
    from prefdata.distributed.generate import sample_on_ray
    from prefdata.generate.run import sampler_dtype

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"prompt": "q{i}"}}\n' for i in range(4)))
    cfg = GenerateConfig(prompts=str(prompts), model="m", backend="hf", n=1, batch_size=2, engine="ray", dtype="auto")
    assert sampler_dtype(cfg) != "float16"  # the driver's own choice on this CPU
    todo = list(load_prompts(cfg.prompts, None, None, None, None).table.iter_rows(named=True))
    seen: list[str | None] = []
    stats = {"sampled": 0, "skipped": 0, "cands": 0, "trunc": 0, "tokens": 0, "sample_s": 0.0}
    dtypes = sample_on_ray(RunDir(tmp_path / "run"), cfg, todo, sampler_hash(cfg), "m", stats, False,
                           before_first_shard=seen.append, actor=_half_actor())
    assert dtypes == {"float16"} and seen[0] == "float16" and stats["sampled"] == 4
