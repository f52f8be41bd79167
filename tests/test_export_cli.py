"""`prefdata export` and `prefdata push` from the command line: success output, and one-line errors with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cand, cli, four, make_ranked_run


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err


def test_export_cli_success_and_yaml_config(tmp_path, capsys):
    run = make_ranked_run(tmp_path / "run", [("q", four()), ("q2", four("x "))])
    code, out, err = cli(capsys, "export", "--run", str(run.path), "--out", str(tmp_path / "a"), "--pairs", "all")
    assert code == 0 and "exported 12 rows (train 12)" in out and "warning: chosen is longer" in out
    cfg = tmp_path / "export.yaml"
    cfg.write_text("pairs: adjacent\nshape: kto\nformat: jsonl\nmin-margin: 0.5\n")
    code, out, _ = cli(capsys, "export", "--run", str(run.path), "--out", str(tmp_path / "b"), "--config", str(cfg),
                        "--format", "parquet")  # fmt: skip
    assert code == 0 and "--pairs adjacent, --shape kto, --format parquet" in out
    assert list((tmp_path / "b" / "data").glob("train-*.parquet"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--pairs", "best"], "unknown --pairs 'best'; choose one of best-worst, best-vs-each, all, adjacent"),
        (["--format", "csv"], "unknown --format 'csv'"),
        (["--shape", "listwise"], "unknown --shape 'listwise'"),
        (["--judge", "nope"], "no rankings for judge nope"),
        (["--test-size", "2"], "--test-size must be a fraction"),
    ],
)
def test_export_cli_bad_options(tmp_path, capsys, args, needle):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    code, _, err = cli(capsys, "export", "--run", str(run.path), *args)
    _one_line_error(code, err, needle)


def test_export_cli_bad_runs(tmp_path, capsys):
    code, _, err = cli(capsys, "export", "--run", str(tmp_path / "missing"))
    _one_line_error(code, err, "is not a prefdata run")
    run = make_ranked_run(tmp_path / "norank", [("q", four())], write_rankings=False)
    code, _, err = cli(capsys, "export", "--run", str(run.path))
    _one_line_error(code, err, "has no rankings yet; run `prefdata rank --run")
    run = make_ranked_run(tmp_path / "tied", [("q", [cand("a", 1), cand("b", 1)]), ("t", [cand("c", 1, finish="length"), cand("d", 2)])])
    code, _, err = cli(capsys, "export", "--run", str(run.path))
    _one_line_error(code, err, "nothing to export: every pair was filtered out (no_preference 1, truncated 1)")
    run = make_ranked_run(tmp_path / "iter", [("q", [cand("a", 1), cand("b", None), cand("c", 3)])])
    code, _, err = cli(capsys, "export", "--run", str(run.path), "--pairs", "all")
    _one_line_error(code, err, "rank with --pairs all (sort: a full order")


def test_export_cli_out_not_empty(tmp_path, capsys):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    out = tmp_path / "out"
    assert cli(capsys, "export", "--run", str(run.path), "--out", str(out))[0] == 0
    code, _, err = cli(capsys, "export", "--run", str(run.path), "--out", str(out))
    _one_line_error(code, err, "is not empty; pass --overwrite")
    assert cli(capsys, "export", "--run", str(run.path), "--out", str(out), "--overwrite")[0] == 0


def test_push_cli_dry_run_and_errors(tmp_path, capsys):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    out = tmp_path / "out"
    cli(capsys, "export", "--run", str(run.path), "--out", str(out))
    code, stdout, _ = cli(capsys, "push", str(out), "--repo-id", "me/prefs", "--dry-run", "--endpoint", "http://hub.invalid")
    assert code == 0
    assert "would upload 3 files" in stdout and "http://hub.invalid/datasets/me/prefs" in stdout
    for f in ("README.md", "data/train-00000-of-00001.parquet", "lengths.png"):
        assert f"  {f}  " in stdout
    _one_line_error(*cli(capsys, "push", str(out), "--repo-id", "noslash")[::2], "--repo-id must look like ORG/NAME")
    _one_line_error(*cli(capsys, "push", str(tmp_path), "--repo-id", "me/x")[::2], "has no README.md")
    _one_line_error(*cli(capsys, "push", str(out))[::2], "--repo-id ORG/NAME is required")


def test_console_script_error_line(tmp_path):
    """The installed `prefdata` script itself: one line on stderr and exit code 2."""
    exe = Path(sys.executable).with_name("prefdata")
    if not exe.exists():
        pytest.skip("prefdata console script not installed in this environment")
    run = make_ranked_run(tmp_path / "run", [("q", four())], write_rankings=False)
    p = subprocess.run([str(exe), "export", "--run", str(run.path)], capture_output=True, text=True,
                       env=dict(os.environ), timeout=120)  # fmt: skip
    _one_line_error(p.returncode, p.stderr, "has no rankings yet")


_HOLD_EXPORT = """import sys, time
from pathlib import Path
from prefdata.export.folder import export_lock
with export_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_export_to_one_out_stops_at_once_and_the_first_is_kept(tmp_path, capsys):
    """Two exports to one --out both exited 0 and the later replaced the earlier: `check_out` ran before any lock.
    Now the export holds a lock on --out from before `check_out` to the swap; a second one stops with one line."""
    run = make_ranked_run(tmp_path / "run", [("q", four()), ("q2", four("x "))])
    out = tmp_path / "sub" / "out"
    assert cli(capsys, "export", "--run", str(run.path), "--out", str(out), "--pairs", "all")[0] == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_EXPORT, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code, _, err = cli(capsys, "export", "--run", str(run.path), "--out", str(out), "--overwrite")
        _one_line_error(code, err, f"another `prefdata export` (pid {holder.pid}) is writing --out {out}")
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
        assert sorted(p.name for p in out.parent.iterdir()) == [".lock-export-out", "out"]  # no temp folder
        assert "export" in run.read_meta()["stages"] and len(run.read_meta()["stages"]["export"]) == 1
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process: the next export works and leaves no lock file
    assert cli(capsys, "export", "--run", str(run.path), "--out", str(out), "--overwrite")[0] == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
    # a fresh --out in folders that do not exist yet: made, used, and the lock file removed
    deep = tmp_path / "a" / "b" / "out"
    assert cli(capsys, "export", "--run", str(run.path), "--out", str(deep))[0] == 0
    assert sorted(p.name for p in deep.parent.iterdir()) == ["out"]
    # an export that fails leaves neither the lock file nor the folders made for it
    tied = make_ranked_run(tmp_path / "tied", [("q", [cand("a", 1), cand("b", 1)])])
    code, _, err = cli(capsys, "export", "--run", str(tied.path), "--out", str(tmp_path / "c" / "d" / "out"))
    _one_line_error(code, err, "nothing to export")
    assert not (tmp_path / "c").exists()
