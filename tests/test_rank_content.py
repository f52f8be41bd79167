"""Judged text is exported text: a candidate id with two texts is refused, and cached judgments are keyed on
content (prompt, reference, both texts, judge), so a changed text is judged again."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, export_run
from prefdata.rank import RankConfig, rank_run, read_judgments, read_rankings
from tests.helpers import OrderJudge, make_candidates_run, quality


def _shards(run) -> list[Path]:
    return sorted(run.candidates_dir.glob("shard-*.parquet"))


def test_duplicate_id_with_other_text_is_an_error_naming_the_shards(tmp_path):
    run, _ = make_candidates_run(tmp_path / "r", [["x q=1", "y q=2", "z q=3"]])
    (first,) = _shards(run)
    cands = pl.read_parquet(first)
    run.write_shard(run.candidates_dir, cands.head(1).with_columns(pl.lit("x q=9 changed").alias("text")))
    second = next(p for p in _shards(run) if p != first)
    for call in (lambda: rank_run(run, RankConfig(progress=False), judge=OrderJudge()),
                 lambda: run.read_candidates()):
        with pytest.raises(PrefdataError) as e:
            call()
        msg = str(e.value)
        assert first.name in msg and second.name in msg and "different texts" in msg
    # the same text written twice (a rerun after a crash) is fine
    second.unlink()
    run.write_shard(run.candidates_dir, cands.head(1))
    assert run.read_candidates().height == 4
    assert rank_run(run, RankConfig(progress=False), judge=OrderJudge())["prompts"] == 1


def test_cache_is_keyed_on_content(tmp_path):
    run, pids = make_candidates_run(tmp_path / "r", [["x q=1", "y q=2", "z q=3"], ["u q=5", "v q=4"]])
    s1 = rank_run(run, RankConfig(progress=False), judge=OrderJudge())
    assert s1["judge_calls_new"] > 0
    assert read_judgments(run, s1["judge_hash"])["content_key"].null_count() == 0
    assert rank_run(run, RankConfig(progress=False), judge=OrderJudge())["judge_calls_new"] == 0
    # the candidate with quality 1 is regenerated under the same id with a much better text
    (shard,) = _shards(run)
    cands = pl.read_parquet(shard).with_columns(
        pl.when(pl.col("text") == "x q=1").then(pl.lit("x q=8 rewritten")).otherwise(pl.col("text")).alias("text")
    )
    shard.unlink()
    run.write_shard(run.candidates_dir, cands)
    judge = OrderJudge()
    s2 = rank_run(run, RankConfig(progress=False), judge=judge)
    assert s2["judge_hash"] == s1["judge_hash"]
    assert s2["judge_calls_new"] > 0 and judge.calls  # pairs with the changed text are asked again
    x_id = cands.filter(pl.col("text") == "x q=8 rewritten")["candidate_id"].item()
    assert all(x_id in c for c in judge.calls)  # and only those
    row = read_rankings(run, s2["judge_hash"]).filter(pl.col("prompt_id") == pids[0]).row(0, named=True)
    assert row["best_id"] == x_id
    # export trusts only judgments of the current texts: the stale verdicts against x do not make it inconsistent
    e = export_run(run, ExportConfig(out=str(tmp_path / "e")))
    assert e.drops.get("inconsistent", 0) == 0 and e.n_rows == 2
    rows = pl.read_parquet(tmp_path / "e" / "data")
    text_of = dict(zip(cands["candidate_id"], cands["text"], strict=True))
    assert {quality(text_of[c]) for c in rows["chosen_id"]} == {8, 5}
