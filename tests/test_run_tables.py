"""RunDir's typed tables: the one place that knows the folder layout and the de-duplication rules."""

from __future__ import annotations

import polars as pl

from prefdata.run.records import CANDIDATE_SCHEMA, JUDGMENT_SCHEMA, RANKING_SCHEMA
from prefdata.run.store import RunDir


def _cand(cid: str, text: str) -> dict:
    return {"prompt_id": "p", "candidate_id": cid, "sampler_hash": "s", "kind": "sample", "index": 0, "text": text,
            "finish_reason": "stop", "n_tokens": 1, "model": "m"}


def test_candidates_written_with_the_schema_and_read_once_per_id(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_candidates([_cand("a", "x"), _cand("b", "y")])
    run.write_candidates([_cand("a", "x")])  # a rerun after a crash wrote it again
    assert run.read_candidates().height == 3
    one = run.read_candidates(unique=True)
    assert one["candidate_id"].to_list() == ["a", "b"] and dict(one.schema) == CANDIDATE_SCHEMA


def test_judgments_by_judge_hash_with_chosen_columns(tmp_path):
    run = RunDir(tmp_path / "r")
    row = dict.fromkeys(JUDGMENT_SCHEMA) | {"prompt_id": "p", "a_id": "a", "b_id": "b", "verdict": "a", "raw": "long"}
    run.write_judgments("j1", [row])
    run.write_shard(run.judgments_dir("j1"), pl.DataFrame({"prompt_id": ["p"], "a_id": ["b"]}))  # an old shard
    df = run.read_judgments("j1", columns=["prompt_id", "a_id", "truncated"])
    assert df.columns == ["prompt_id", "a_id", "truncated"] and df.height == 2
    assert df["truncated"].null_count() == 2  # missing in both shards: nulls, not an error
    assert run.read_judgments("j1")["raw"].to_list() == ["long", None]
    assert run.read_judgments("other") is None


def test_rankings_rewritten_newest_row_per_prompt(tmp_path):
    run = RunDir(tmp_path / "r")
    row = dict.fromkeys(RANKING_SCHEMA) | {"prompt_id": "p", "judge_hash": "j1"}
    run.write_rankings("j1", [row | {"best_id": "old"}])
    run.write_rankings("j1", [row | {"best_id": "new"}])
    assert len(list(run.rankings_dir("j1").glob("shard-*.parquet"))) == 1
    # a crash between writing the new shard and removing the old one leaves two: the newest row wins
    run.write_shard(run.rankings_dir("j1"), pl.DataFrame([row | {"best_id": "newest"}], schema=RANKING_SCHEMA))
    assert run.read_rankings("j1")["best_id"].to_list() == ["newest"]
    assert run.judge_hashes() == ["j1"] and run.read_rankings("j2") is None
