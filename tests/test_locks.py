"""One process per stage and run directory: a second identical rank or generate stops with one line naming the
first one's pid; generate shards lock separately and run side by side. Real processes throughout."""

from __future__ import annotations

import subprocess
import sys
import time

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.rank import read_judgments
from prefdata.run.store import stage_lock
from tests.helpers import FaultServer, hold_stage_lock, make_candidates_run, quality_texts


def test_generate_lock_names_the_holder_and_shards_run_side_by_side(tmp_path):
    run_path = tmp_path / "run"
    p = hold_stage_lock(run_path, "generate")
    try:
        with pytest.raises(PrefdataError, match=rf"another `prefdata generate` \(pid {p.pid}\) is working on"):
            with stage_lock(run_path, "generate"):
                pass
        with stage_lock(run_path, "rank"):  # another stage is not blocked
            pass
    finally:
        p.kill()
        p.wait()
    with stage_lock(run_path, "generate"):  # released when its process died (kill -9 included)
        pass
    s0 = hold_stage_lock(run_path, "generate", "0/2")
    try:
        with stage_lock(run_path, "generate", "1/2"):  # the other shard works side by side
            pass
        with pytest.raises(PrefdataError, match=rf"--shard 0/2` \(pid {s0.pid}\)"):
            with stage_lock(run_path, "generate", "0/2"):
                pass
    finally:
        s0.kill()
        s0.wait()


def test_unwritable_run_location_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PrefdataError, match="cannot write in the run directory"):
        with stage_lock(blocker / "run", "generate"):
            pass


def test_second_rank_process_on_one_run_stops_naming_the_first(tmp_path):
    server = FaultServer()
    server.healthy = True
    server.delay_s = 0.3
    try:
        run, _ = make_candidates_run(tmp_path / "r", [quality_texts([3, 1, 4, 2]), quality_texts([5, 9, 2])])
        cmd = [sys.executable, "-m", "prefdata.cli", "rank", "--run", str(run.path), "--base-url", server.url,
               "--concurrency", "1", "--batch-size", "2", "--no-progress"]
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lock = run.path / ".lock-rank"
        deadline = time.time() + 60
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: another `prefdata rank`") and f"pid {first.pid}" in lines[0]
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        jh = next(iter(run.read_meta()["stages"]["rank"]))
        j = read_judgments(run, jh)
        assert j.select(["prompt_id", "a_id", "b_id"]).is_duplicated().sum() == 0  # no call made twice
        assert j.height == pl.Series(server.requests).len()
    finally:
        server.close()


def test_a_stage_that_writes_nothing_leaves_no_folder(tmp_path):
    with pytest.raises(PrefdataError, match="bad input"):
        with stage_lock(tmp_path / "new-run", "generate"):
            raise PrefdataError("bad input")
    assert not (tmp_path / "new-run").exists()
    with stage_lock(tmp_path / "kept", "generate"):
        (tmp_path / "kept" / "run.json").write_text("{}")
    assert (tmp_path / "kept" / "run.json").is_file()


def test_a_whole_run_generate_and_a_shard_never_overlap(tmp_path):
    """Regression (issue 10 item 8): an unsharded generate and a `--shard I/K` generate took different locks, so
    they ran together on one run and wrote candidates twice."""
    run_path = tmp_path / "run"
    whole = hold_stage_lock(run_path, "generate")
    try:
        with pytest.raises(PrefdataError, match=rf"another `prefdata generate` \(pid {whole.pid}\)"):
            with stage_lock(run_path, "generate", "0/2"):
                pass
    finally:
        whole.kill()
        whole.wait()
    shard = hold_stage_lock(run_path, "generate", "0/2")
    try:
        with pytest.raises(PrefdataError, match=r"another `prefdata generate --shard` \(see `ps`\)"):
            with stage_lock(run_path, "generate"):
                pass
        with stage_lock(run_path, "generate", "1/2"):  # shards still run side by side
            pass
    finally:
        shard.kill()
        shard.wait()
    with stage_lock(run_path, "generate"):
        pass
