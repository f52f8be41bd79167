"""The shared run builder of the rank tests (tests/helpers.py) writes what `generate` writes."""

from __future__ import annotations

from tests.helpers import make_candidates_run


def test_make_run_roundtrip(tmp_path):
    run, pids = make_candidates_run(tmp_path / "r", [["cand q=1", "cand q=2"]])
    assert run.exists()
    assert run.read_candidates().height == 2
    assert run.read_prompts()["prompt_id"].to_list() == pids
