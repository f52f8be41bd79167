"""The one-step path: `prefdata rank ... --export DIR` ranks and exports in one command."""

from __future__ import annotations

import subprocess
import sys

import polars as pl

from tests.helpers import build_tiny_rm, make_candidates_run


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefdata.cli", *args], capture_output=True, text=True, timeout=300)


def test_rank_then_export_in_one_command(tmp_path, demo_model_dir):
    rm = build_tiny_rm(tmp_path / "rm", demo_model_dir)
    texts = [["Paris.", "It is Paris, the capital.", "London?"], ["4", "Four.", "2+2 is 4."], ["Blue.", "Red", "Green!"]]
    run, _ = make_candidates_run(tmp_path / "run", texts)
    out = tmp_path / "export"
    proc = _cli("rank", "--run", str(run.path), "--judge", str(rm), "--export", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    df = pl.read_parquet(out / "data" / "*.parquet")
    assert df.height == 3 and (df["chosen_score"] > df["rejected_score"]).all()
    assert (out / "README.md").is_file() and "exported 3 rows" in proc.stdout


def test_push_without_export_is_one_clear_error(tmp_path):
    proc = _cli("rank", "--run", str(tmp_path / "nope"), "--push-to-hub", "org/name")
    assert proc.returncode == 2
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1 and "needs --export" in proc.stderr
