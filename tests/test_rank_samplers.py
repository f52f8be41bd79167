"""Two samplers in one run (`generate --allow-new-config`) are ranked and exported one at a time.

Before, rank pooled both samplers' candidates per prompt (the reference answer twice, once per sampler) and
export paired one sampler's answer with the other's. Now `--sampler HASH` (a unique prefix) picks one, a run
with several refuses without it (one line listing them), and `--sampler all` mixes them as a stated choice."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, export_run
from prefdata.judges.build import build_judge
from prefdata.rank import RankConfig, judge_identity, rank_run
from prefdata.run.records import stable_hash
from prefdata.run.store import RunDir
from tests.helpers import candidate_row, cli, prompt_row, write_inputs

A, B = "aaaa11112222", "aaaa33334444"


def _judge_file(tmp_path: Path) -> str:
    f = tmp_path / "longest.py"
    f.write_text("def score(messages, completion, reference):\n    return float(len(completion))\n")
    return f"python:{f}:score"


def _run(path: Path, samplers: tuple[str, ...]) -> RunDir:
    """Three prompts; each sampler has two answers of distinct lengths and its own reference candidate."""
    run = RunDir(path)
    for h in samplers:
        run.record_stage("generate", h, {"config": {"model": f"model-{h[-4:]}"}})
    prows = [prompt_row(f"Question {i}?", reference=f"ref {i}") for i in range(3)]
    crows = []
    for h in samplers:
        for p in prows:
            crows += [candidate_row(p["prompt_id"], h, 0, f"{h} short", model=h),
                      candidate_row(p["prompt_id"], h, 1, f"{h} a much longer answer", model=h),
                      candidate_row(p["prompt_id"], h, 0, p["reference"], model=h, kind="reference")]
    return write_inputs(run, prows, crows)


def _ranked_samplers(run: RunDir, jh: str) -> set[str]:
    ids = set(run.read_rankings(jh)["candidate_ids"].explode().to_list())
    cands = run.read_candidates()
    return set(cands.filter(pl.col("candidate_id").is_in(list(ids)))["sampler_hash"].to_list())


def test_two_samplers_are_ranked_and_exported_apart(tmp_path, capsys):
    judge = _judge_file(tmp_path)
    run = _run(tmp_path / "run", (A, B))
    # no --sampler: one line naming both samplers and how to choose; nothing ranked
    code, _, err = cli(capsys, "rank", "--run", str(run.path), "--judge", judge, "--no-progress")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert f"{A} (model model-2222)" in err and f"{B} (model model-4444)" in err and "--sampler HASH" in err
    assert run.judge_hashes() == []
    code, _, err = cli(capsys, "rank", "--run", str(run.path), "--judge", judge, "--sampler", "aaaa")
    assert code == 2 and "--sampler aaaa matches several samplers" in err
    code, _, err = cli(capsys, "rank", "--run", str(run.path), "--judge", judge, "--sampler", "bbbb")
    assert code == 2 and "--sampler bbbb matches no sampler" in err

    # one sampler each (a unique prefix will do): two judge hashes, each ranking one sampler's candidates
    sa = rank_run(run, RankConfig(judge=judge, sampler="aaaa1", progress=False))
    sb = rank_run(run, RankConfig(judge=judge, sampler=B, progress=False))
    ja, jb = sa["judge_hash"], sb["judge_hash"]
    assert ja != jb and sa["candidates"] == sb["candidates"] == 9  # 3 prompts x (2 samples + 1 reference)
    assert _ranked_samplers(run, ja) == {A} and _ranked_samplers(run, jb) == {B}
    assert run.read_meta()["stages"]["rank"][ja]["samplers"] == [A]

    # export: several rankings, so --sampler (or --judge) picks; every pair stays within one sampler
    code, _, err = cli(capsys, "export", "--run", str(run.path), "--out", str(tmp_path / "x"))
    assert code == 2 and "several judges" in err and "--sampler HASH" in err and not (tmp_path / "x").exists()
    for h, prefix in ((A, "aaaa1"), (B, "aaaa3")):
        s = export_run(run, ExportConfig(sampler=prefix, pairs="all", out=str(tmp_path / h)))
        rows = pl.read_parquet(tmp_path / h / "data" / "*.parquet")
        assert s.sampler_hashes == [h] and rows.height == 9  # 3 ordered pairs per prompt, no second reference
        assert set(rows["sampler_hash"]) == set(rows["rejected_sampler_hash"]) == {h}

    # mixing is a choice: --sampler all ranks the pool, and export refuses it unless asked for the mix too
    sall = rank_run(run, RankConfig(judge=judge, sampler="all", progress=False))
    jall = sall["judge_hash"]
    assert sall["candidates"] == 18 and _ranked_samplers(run, jall) == {A, B}
    code, _, err = cli(capsys, "export", "--run", str(run.path), "--judge", jall, "--out", str(tmp_path / "mix"))
    assert code == 2 and err.count("\n") == 1 and "rank the candidates of 2 samplers together" in err
    assert "--sampler all" in err and not (tmp_path / "mix").exists()
    code, _, err = cli(capsys, "export", "--run", str(run.path), "--judge", jall, "--sampler", A, "--out", str(tmp_path / "mix"))
    assert code == 2 and "2 samplers together" in err
    s = export_run(run, ExportConfig(judge_hash=jall, sampler="all", pairs="all", out=str(tmp_path / "mix")))
    assert s.sampler_hashes == [A, B]
    # rankings of one sampler with --sampler naming the other: refused
    with pytest.raises(PrefdataError, match=f"--sampler {B} matches no sampler of the rankings of judge {ja}"):
        export_run(run, ExportConfig(judge_hash=ja, sampler=B, out=str(tmp_path / "y")))


def test_a_one_sampler_run_keeps_its_judge_hash(tmp_path):
    """The single-sampler path is unchanged: the same judge hash as before, with or without --sampler."""
    judge = _judge_file(tmp_path)
    run = _run(tmp_path / "one", (A,))
    cfg = RankConfig(judge=judge, progress=False)
    before = stable_hash(judge_identity(cfg, build_judge(cfg), "scores"))  # the identity as it was computed
    s = rank_run(run, cfg)
    assert s["judge_hash"] == before and s["candidates"] == 9
    assert rank_run(run, RankConfig(judge=judge, sampler="aaaa", progress=False))["judge_hash"] == before
    with pytest.raises(PrefdataError, match="--sampler b matches no sampler"):
        rank_run(run, RankConfig(judge=judge, sampler="b", progress=False))
    assert export_run(run, ExportConfig(out=str(tmp_path / "e"))).sampler_hashes == [A]
