"""Chaos: `prefdata rank` killed with SIGKILL at random moments (fixed seed) and rerun ends with exactly the
judgments and rankings of an uninterrupted run: nothing lost, nothing asked twice, nothing different."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from prefdata.rank import read_judgments, read_rankings
from tests.helpers import FaultServer, make_candidates_run

KILLS = 6
QS = [[3, 1, 4, 2, 6], [5, 9, 2, 7], [1, 6, 3, 8, 2], [7, 2, 5, 5], [4, 8, 1, 9, 3], [2, 5, 7],
      [6, 3, 9, 1], [9, 1, 5, 2, 8], [3, 3, 7, 4], [8, 6, 2, 5, 1]]


def _build(path: Path):
    return make_candidates_run(path, [[f"answer q={q} number {i}" for i, q in enumerate(qs)] for qs in QS])[0]


def _cmd(run, url: str) -> list[str]:
    return [sys.executable, "-m", "prefdata.cli", "rank", "--run", str(run.path), "--base-url", url,
            "--concurrency", "2", "--batch-size", "4", "--no-progress"]


def _state(run) -> tuple[pl.DataFrame, pl.DataFrame]:
    jh = next(iter(run.read_meta()["stages"]["rank"]))
    cols = ["prompt_id", "a_id", "b_id", "order", "verdict", "winner_id", "content_key"]
    j = read_judgments(run, jh).select(cols)
    assert j.select(["prompt_id", "a_id", "b_id"]).is_duplicated().sum() == 0  # no call answered twice
    r = read_rankings(run, jh).drop("judge_hash")
    return j.sort(["prompt_id", "a_id", "b_id"]), r.sort("prompt_id")


def test_killed_rank_reruns_to_the_uninterrupted_result(tmp_path):
    server = FaultServer()
    server.healthy = True
    server.delay_s = 0.04
    try:
        ref = _build(tmp_path / "ref")
        p = subprocess.run(_cmd(ref, server.url), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        want_j, want_r = _state(ref)

        n_ref = len(list(ref.path.glob("judgments/*/shard-*.parquet")))
        assert n_ref >= 4 * KILLS

        run = _build(tmp_path / "chaos")
        rng = random.Random(1234)
        shards = []  # judgments shards on disk at each kill: every kill lands while work is in progress
        for _ in range(KILLS):
            target = (shards[-1] if shards else 0) + rng.randint(1, 3)  # kill after 1-3 more rounds ...
            proc = subprocess.Popen(_cmd(run, server.url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while len(list(run.path.glob("judgments/*/shard-*.parquet"))) < target:
                assert proc.poll() is None and time.monotonic() < deadline, "rank ended before the kill"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))  # ... and at a random moment inside the next one
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            shards.append(len(list(run.path.glob("judgments/*/shard-*.parquet"))))
        done = subprocess.run(_cmd(run, server.url), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        got_j, got_r = _state(run)
        assert got_j.equals(want_j)
        assert got_r.equals(want_r)
        # and a further rerun asks nothing
        again = subprocess.run(_cmd(run, server.url), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "(0 new" in again.stdout
    finally:
        server.close()
