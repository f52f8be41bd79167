"""`prefdata iterate --engine ray` on a real local Ray: each round's sampling, ranking and eval in Ray actors, one
Ray for the whole loop, training in this process; the same candidates and rankings as the local loop, and a local
loop and a Ray loop resume each other."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.iterate import IterateConfig, iterate
from prefdata.iterate.report import effective_config
from prefdata.run.interrupts import wait_gone
from prefdata.run.store import RunDir
from tests import test_ray
from tests.helpers import cli

ray_local = test_ray.ray_local  # the module's one local Ray (the second half of this file)

SUMS = [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (4, 5), (6, 1), (9, 3)]


def _one_line(code: int, err: str, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (code, err)


def test_reuse_engine_with_engine_ray_is_one_error_line(tmp_path, capsys):
    code, _, err = cli(capsys, "iterate", "--workdir", str(tmp_path / "loop"), "--engine", "ray", "--reuse-engine")
    _one_line(code, err, "--reuse-engine keeps one vLLM engine in this process")
    assert not (tmp_path / "loop").exists()
    code, _, err = cli(capsys, "iterate", "--workdir", str(tmp_path / "loop"), "--set", "generate.engine=ray")
    _one_line(code, err, "engine is set by the loop itself")


def test_where_the_stages_run_is_not_part_of_the_loop_config():
    local = IterateConfig(generate={"n": 2})
    on_ray = IterateConfig(generate={"n": 2, "data_parallel_size": 2}, rank={"dp": 2}, engine="ray",
                           ray_address="10.0.0.1:6379")
    assert effective_config(dataclasses.asdict(IterateConfig(generate={"n": 2}, reuse_engine=True))) == effective_config(
        dataclasses.asdict(local))  # keeping the engine across rounds changes no result
    on_ray.check_stages()  # on Ray the generate data-parallel size is the number of engine actors
    with pytest.raises(PrefdataError, match="one engine per round"):
        IterateConfig(generate={"data_parallel_size": 2}).check_stages()
    assert effective_config(dataclasses.asdict(on_ray)) == effective_config(dataclasses.asdict(local))
    assert effective_config(dataclasses.asdict(IterateConfig(generate={"n": 3}))) != effective_config(
        dataclasses.asdict(local))  # a change of what is computed still counts


def test_a_judge_behind_base_url_stays_local_while_in_process_judges_go_to_ray(tiny_rm_dir):
    from prefdata.distributed.score import judge_engine

    url = ["http://127.0.0.1:1/v1"]
    assert judge_engine("ray", "verdict-only", url) == "local"  # remote already: rank --engine ray would refuse it
    assert judge_engine("ray", "verdict-only", []) == "ray"  # an LLM judge on in-process vLLM
    assert judge_engine("ray", "verify:number", url) == "ray"
    assert judge_engine("ray", str(tiny_rm_dir), []) == "ray"
    assert judge_engine("local", str(tiny_rm_dir), []) == "local"


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "sums.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n" for a, b in SUMS))
    return p


def _cfg(prompts: Path, model: Path, rm: Path, rounds: int = 1, **kw) -> IterateConfig:
    """Greedy answers plus the reference answer per prompt (two distinct candidates, so there are pairs to train on,
    and the same candidates whichever actor samples them), a reward-model judge, a held-out eval."""
    generate = {"backend": "hf", "n": 1, "temperature": 0.0, "max_tokens": 6, "batch_size": 2, "dtype": "float32",
                "reference_field": "answer"}
    return IterateConfig(
        rounds=rounds, model=str(model), prompts=str(prompts), prompts_per_round=3, eval_size=2,
        generate=generate | kw.pop("generate", {}), rank={"judge": str(rm), "rm_backend": "hf", "dtype": "float32"},
        export={"keep_truncated": True},
        train={"per_device_train_batch_size": 2, "learning_rate": 1e-4, "logging_steps": 1, "save_steps": 1,
               "max_length": 128, "max_prompt_length": 64, "report_to": [], "max_steps": 1},
        **kw,
    )


@pytest.fixture(scope="module")
def local_loop(tmp_path_factory, prompts_file, tiny_llama_dir, tiny_rm_dir) -> Path:
    work = tmp_path_factory.mktemp("local") / "loop"
    iterate(work, _cfg(prompts_file, tiny_llama_dir, tiny_rm_dir), progress=False, log=lambda _: None)
    return work


def _cands(run: Path) -> pl.DataFrame:
    df = RunDir(run).read_candidates()
    assert df is not None
    return df.select(test_ray.COLS).sort("candidate_id")


def _rank_record(run: Path) -> dict:
    (entry,) = RunDir(run).read_meta()["stages"]["rank"].values()
    return entry


def _engines(run: Path, stage: str) -> set[str]:
    return {e["config"]["engine"] for e in RunDir(run).read_meta()["stages"][stage].values()}


@pytest.mark.slow
def test_a_ray_loop_starts_ray_once_and_gives_the_local_loop(local_loop, prompts_file, tiny_llama_dir, tiny_rm_dir,
                                                             tmp_path, monkeypatch):
    import ray

    assert not ray.is_initialized()  # this test runs before the module's shared Ray: the loop starts its own
    inits = []
    real_init = ray.init

    def counted_init(*args, **kwargs):
        inits.append(kwargs.get("address"))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", counted_init)
    had_token = test_ray.TOKEN_FILE.exists()
    work = tmp_path / "loop"
    logs: list[str] = []
    cfg = _cfg(prompts_file, tiny_llama_dir, tiny_rm_dir, engine="ray", generate={"data_parallel_size": 2})
    table = iterate(work, cfg, progress=False, log=logs.append).table
    assert len(inits) == 1, inits  # one Ray for generate, rank, the eval's sampling and judging: not one per stage
    assert any("a local Ray started for this loop" in line for line in logs), logs
    assert not ray.is_initialized()
    assert wait_gone([p.pid for p in test_ray._ray_procs()], 20) == [], "Ray processes left running after the loop"
    assert had_token or not test_ray.TOKEN_FILE.exists()
    assert table.height == 1 and (work / "round-0" / "train" / "prefdata_train.json").is_file()
    r0, l0 = work / "round-0", local_loop / "round-0"
    assert _engines(r0, "generate") == {"ray"} and _engines(l0, "generate") == {"local"}
    assert _engines(r0, "rank") == {"ray"} and _engines(l0, "rank") == {"local"}
    # the same greedy candidates (and reference candidates), the same judge hash, scores and rankings
    ray_c, local_c = _cands(r0), _cands(l0)
    assert ray_c.height == 6 and set(ray_c["kind"]) == {"sample", "reference"} and ray_c.equals(local_c)
    a, b = _rank_record(l0), _rank_record(r0)
    assert a["judge_hash"] == b["judge_hash"]
    ra, rb = (RunDir(p).read_rankings(a["judge_hash"]).sort("prompt_id") for p in (l0, r0))
    assert ra.height == 3 and ra.select("candidate_ids", "ranks").equals(rb.select("candidate_ids", "ranks"))
    assert [s for r in rb["scores"] for s in r] == pytest.approx([s for r in ra["scores"] for s in r], abs=1e-5)
    # the eval of round 0's checkpoint against the start: answers and judge on Ray, the local result
    ea, eb = (json.loads((p / "eval" / "eval.json").read_text()) for p in (l0, r0))
    keys = ("prompts", "compared", "model_sampler", "baseline_sampler", "judge_hash", "wins", "ties", "losses")
    assert ea["compared"] == 2 and {k: eb[k] for k in keys} == {k: ea[k] for k in keys}
    assert eb["mean_score"] == pytest.approx(ea["mean_score"], abs=1e-5)
    assert _cands(r0 / "eval").equals(_cands(l0 / "eval"))
    assert _engines(r0 / "eval", "generate") == {"ray"} and _engines(r0 / "eval", "rank") == {"ray"}


@pytest.mark.slow
def test_local_and_ray_loops_resume_each_other(ray_local, local_loop, prompts_file, tiny_llama_dir, tiny_rm_dir,
                                               tmp_path):
    work = tmp_path / "loop"
    shutil.copytree(local_loop, work)
    logs: list[str] = []
    # a local workdir, one more round on Ray (with two sampling actors, which the local loop would refuse)
    cfg = _cfg(prompts_file, tiny_llama_dir, tiny_rm_dir, rounds=2, engine="ray", generate={"data_parallel_size": 2})
    table = iterate(work, cfg, progress=False, log=logs.append).table
    assert "round 0: done" in logs and table["round"].to_list() == [0, 1]
    r1 = work / "round-1"
    assert _engines(work / "round-0", "generate") == {"local"} and _engines(r1, "generate") == {"ray"}
    assert _engines(r1, "rank") == {"ray"} and (r1 / "train" / "prefdata_train.json").is_file()
    assert [e["model"] for e in RunDir(r1).read_meta()["stages"]["generate"].values()] == ["round-0/train"]
    assert json.loads((r1 / "eval" / "eval.json").read_text())["compared"] == 2
    # ... and back: the Ray-made workdir, resumed by the local loop, is finished (nothing sampled again)
    before = _cands(r1)
    logs.clear()
    iterate(work, _cfg(prompts_file, tiny_llama_dir, tiny_rm_dir, rounds=2), progress=False, log=logs.append)
    assert logs == ["round 0: done", "round 1: done"]
    assert _cands(r1).equals(before)
