"""rank, then export, as two console commands (subprocess): the real CLI end to end with a tiny reward model.
rank does only ranking: composing stages is `prefdata iterate`'s job (issue 11), so rank has no --export."""

from __future__ import annotations

import subprocess
import sys

import polars as pl

from tests.helpers import build_tiny_rm, make_candidates_run


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefdata.cli", *args], capture_output=True, text=True, timeout=600)


def test_rank_then_export(tmp_path, demo_model_dir):
    rm = build_tiny_rm(tmp_path / "rm", demo_model_dir)
    texts = [["Paris.", "It is Paris, the capital.", "London?"], ["4", "Four.", "2+2 is 4."], ["Blue.", "Red", "Green!"]]
    run, _ = make_candidates_run(tmp_path / "run", texts)
    out = tmp_path / "export"
    proc = _cli("rank", "--run", str(run.path), "--judge", str(rm), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    proc = _cli("export", "--run", str(run.path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    df = pl.read_parquet(out / "data" / "*.parquet")
    assert df.height == 3 and (df["chosen_score"] > df["rejected_score"]).all()
    assert (out / "README.md").is_file() and "exported 3 rows" in proc.stdout


def test_rank_has_no_export_or_push(tmp_path):
    for flag, value in (("--export", str(tmp_path / "out")), ("--push-to-hub", "org/name")):
        proc = _cli("rank", "--run", str(tmp_path / "nope"), flag, value)
        assert proc.returncode == 2
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and flag in errors[0], proc.stderr
        assert not (tmp_path / "nope").exists()
