"""Failures that once ended in a traceback or a silent exit (issue 20, items 7 and 8): each is now one `error:`
line with exit 2 (or a recorded judge failure), and leaves no lock file, empty folder or 0-byte temp file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import polars as pl
import pytest

from prefdata.cli import _user_os_error
from tests.helpers import cli, make_candidates_run, make_ref_run

BIG_SEED = str(2**64 + 1)


def _one_line(code: int, err: str, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (code, err)


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _litter(before: set[Path], root: Path) -> list[Path]:
    """What a failed command added: temp files, empty folders, 0-byte files, lock files (but the stage lock of a
    run that already existed, which every rank leaves there, finished or not; a new run's is removed)."""
    new = _tree(root) - before
    return sorted(p for p in new if p.name.startswith(".tmp-") or (p.is_dir() and not any(p.iterdir()))
                  or (p.is_file() and p.stat().st_size == 0)
                  or (p.name.startswith(".lock") and not (p.parent in before and p.name == ".lock-rank")))  # fmt: skip


@pytest.mark.parametrize("verb", ["generate", "rank", "eval"])
def test_seed_beyond_what_the_libraries_take(tmp_path, capsys, verb):
    """torch.manual_seed overflowed on 2**64 + 1 after .lock-generate and logs/ were made; numpy (vLLM,
    transformers' set_seed) stops at 2**32 - 1. Refused when the config is built."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi", "ref": "1"}\n')
    run = tmp_path / "run"
    extra = {"generate": [str(prompts), "--backend", "hf"], "rank": ["--judge", "verify:number"],
             "eval": ["--prompts", str(prompts), "--judge", "verify:number", "--baseline", "ref"]}[verb]  # fmt: skip
    code, _, err = cli(capsys, verb, "--run", str(run), "--seed", BIG_SEED, *extra)
    _one_line(code, err, f"--seed must be in [0, 4294967295], got {BIG_SEED}")
    assert not run.exists()


def test_seed_in_iterate_and_train_settings(tmp_path, capsys):
    code, _, err = cli(capsys, "iterate", "--workdir", str(tmp_path / "loop"), "--set", f"rank.seed={BIG_SEED}")
    _one_line(code, err, "--seed must be in [0, 4294967295]")
    from prefdata.train.config import AIPOConfig

    with pytest.raises(ValueError, match="seed must be in"):
        AIPOConfig(output_dir=str(tmp_path / "out"), seed=2**33)
    assert not (tmp_path / "loop").exists()


def test_template_with_a_bad_verdict_pattern(tmp_path, capsys):
    run, _ = make_candidates_run(tmp_path / "run", [["a", "b"]])
    before = _tree(tmp_path)
    for pattern, needle in (("\\[\\[(A|B", "is not a valid regular expression"), ("\\[\\[[AB]\\]\\]", "needs a group")):
        template = tmp_path / "t.yaml"
        template.write_text(f"name: t\nsystem: s\nuser: '{{question}}'\nverdict_pattern: '{pattern}'\nlabels: {{A: a, B: b}}\n")
        code, _, err = cli(capsys, "rank", "--run", str(run.path), "--judge", str(template), "--base-url", "http://127.0.0.1:9/v1")
        _one_line(code, err, needle)
    assert not [p for p in _litter(before, tmp_path) if p.name != "t.yaml" and p.parent.name != "logs"]


def test_rank_run_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = cli(capsys, "rank", "--run", str(f), "--judge", "verify:number")
    _one_line(code, err, "is a file, not a run directory")
    assert sorted(tmp_path.iterdir()) == [f]


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("rank.positon_bias=random", "unknown field(s) positon_bias for RankConfig; did you mean position_bias?"),
        ("generate.n=abc", "--set generate.n: config field 'n' must be int, got 'abc'"),
        ("generate.n=0", "-n must be in [1, inf), got 0"),
        ("generate.model=x", "model is set by eval itself"),
        ("rank.kinds=[reference]", "kinds is set by eval itself"),
    ],
)
def test_eval_set_is_parsed_as_iterate_parses_it(tmp_path, capsys, setting, needle):
    """One --set parser for eval and iterate: misspelt fields get a suggestion and values their type, before
    anything is sampled (the typo once came out as a TypeError after both sides had been generated)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi", "ref": "1"}\n')
    run = tmp_path / "run"
    code, _, err = cli(capsys, "eval", "--run", str(run), "--prompts", str(prompts), "--judge", "verify:number",
                     "--baseline", "ref", "--set", setting)  # fmt: skip
    _one_line(code, err, needle)
    assert not run.exists()


def _full_disk_write(self: pl.DataFrame, file: object, *args: object, **kwargs: object) -> None:
    """What polars does on a full disk: the file is created, then the write fails with the OSError as text."""
    Path(str(file)).write_bytes(b"")
    raise pl.exceptions.ComputeError("parquet: File out of specification: underlying IO error: No space left on device "
                                     "(os error 28)")


def test_full_disk_during_rank(tmp_path, capsys, monkeypatch):
    """polars wraps ENOSPC in a ComputeError; the CLI finds it and the atomic write removes its temp file."""
    judge = tmp_path / "j.py"
    judge.write_text("def score(messages, completion, reference):\n    return float(completion == reference)\n")
    run, _ = make_ref_run(tmp_path / "run", [("q1", "1", ["1", "2"]), ("q2", "2", ["2", "3"])])
    before = _tree(tmp_path)
    monkeypatch.setattr(pl.DataFrame, "write_parquet", _full_disk_write)
    code, _, err = cli(capsys, "rank", "--run", str(run.path), "--judge", f"python:{judge}:score", "--no-progress")
    _one_line(code, err, "No space left on device; check the permissions and free space")
    assert not [p for p in _litter(before, tmp_path) if p.parent.name != "logs"]
    assert not list(run.path.rglob(".tmp-*"))


def test_enospc_found_through_wrapped_errors():
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/x")
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as outer:
        found = _user_os_error(outer)
    assert found is not None and found.errno == errno.ENOSPC and found.filename == "/data/x"
    assert _user_os_error(ValueError("Permission denied (os error 13)")).errno == errno.EACCES  # type: ignore[union-attr]
    assert _user_os_error(RuntimeError("boom")) is None


def test_atomic_write_removes_its_temp_file_on_any_failure(tmp_path):
    from prefdata.run.store import atomic_write

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.parquet", half)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- item 8: a python: judge cannot end rank


def test_judge_function_calling_exit_is_a_recorded_failure(tmp_path, capsys):
    judge = tmp_path / "j.py"
    judge.write_text("import sys\n\ndef score(messages, completion, reference):\n    sys.exit(0)\n")
    run, _ = make_ref_run(tmp_path / "run", [("q1", "1", ["1", "2"])])
    code, _, err = cli(capsys, "rank", "--run", str(run.path), "--judge", f"python:{judge}:score")
    assert code != 0, err
    judgments = pl.concat([pl.read_parquet(p) for p in (run.path / "judgments").rglob("*.parquet")])
    assert judgments["error"].to_list() == ["SystemExit: the code called sys.exit(0)"] * 2


def test_judge_module_calling_exit_on_import(tmp_path, capsys):
    judge = tmp_path / "j.py"
    judge.write_text("import sys\nsys.exit(3)\n")
    run, _ = make_ref_run(tmp_path / "run", [("q1", "1", ["1", "2"])])
    code, _, err = cli(capsys, "rank", "--run", str(run.path), "--judge", f"python:{judge}:score")
    _one_line(code, err, "could not be loaded (SystemExit: the code called sys.exit(3))")


def test_ctrl_c_in_a_judge_function_still_stops_the_run(tmp_path):
    from prefdata.judges.verdict import Candidate, ScoreRequest
    from prefdata.judges.verifier import build_verifier

    judge = tmp_path / "j.py"
    judge.write_text("def score(messages, completion, reference):\n    raise KeyboardInterrupt\n")
    v = build_verifier(f"python:{judge}:score")
    with pytest.raises(KeyboardInterrupt):
        v.score([ScoreRequest("p", (("user", "q"),), Candidate("c", "t"), "1")])
