"""An export folder stays exactly what `prefdata export` wrote (issue 20, items 2 and 3): no stage writes a run (or
a training output) in it, `push` uploads exactly the files its manifest lists and refuses a folder holding anything
else, and `export --name` is one folder name under RUN/exports/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prefdata.cli import main
from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, export_run
from prefdata.export.push import push_export
from prefdata.run.store import RunDir, stage_lock
from tests.helpers import four, make_ranked_run, write_jsonl


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


@pytest.fixture
def exported(tmp_path) -> tuple[RunDir, Path]:
    run = make_ranked_run(tmp_path / "run", [(f"q{i}", four(f"{i} ")) for i in range(3)])
    out = tmp_path / "export"
    export_run(run, ExportConfig(out=str(out)))
    return run, out


def test_stages_refuse_to_write_a_run_in_an_export_folder(tmp_path, exported):
    """Before: `generate --run EXPORT` exited 0 and wrote run.json, candidates/, prompts.parquet and logs/ into it."""
    _, out = exported
    before = _tree(out)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?"}])
    cli = [sys.executable, "-m", "prefdata.cli"]
    dead = "http://127.0.0.1:9/v1"
    for args in (
        ["generate", str(prompts), "--run", str(out), "--backend", "openai", "--base-url", dead, "--model", "m"],
        ["generate", str(prompts), "--run", str(out / "inner"), "--backend", "openai", "--base-url", dead, "--model", "m"],
        ["rank", "--run", str(out), "--base-url", dead],  # real processes: their logs/ would go in there first
    ):
        p = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
        _one_line(p.returncode, p.stderr, "export folder")
        assert "Traceback" not in p.stderr
    assert _tree(out) == before and not (out / "inner").exists()
    with pytest.raises(PrefdataError, match="is an export folder"), stage_lock(out, "train"):  # train's --output-dir
        pass
    assert _tree(out) == before


def test_push_uploads_exactly_the_manifest_and_refuses_anything_else(exported):
    """Before: push --dry-run listed every non-hidden file of the folder, a run written into it included."""
    _, out = exported
    listed = sorted(p for p, _ in push_export(out, "me/prefs", dry_run=True).files)
    assert listed == sorted(p for p in _tree(out) if p != ".prefdata-export.json")
    (out / ".prefdata_ref_cache").mkdir()  # the reference log-prob cache `prefdata train EXPORT` keeps there
    (out / ".prefdata_ref_cache" / "x.bin").write_bytes(b"cache")
    assert sorted(p for p, _ in push_export(out, "me/prefs", dry_run=True).files) == listed
    for extra in ("run.json", "logs/generate.log", ".env", "data/extra.parquet"):
        (out / extra).parent.mkdir(parents=True, exist_ok=True)
        (out / extra).write_text("not part of the export")
        with pytest.raises(PrefdataError, match="did not write"):
            push_export(out, "me/prefs", dry_run=True)
        (out / extra).unlink()
    (out / next(p for p in listed if p.startswith("data/"))).unlink()
    with pytest.raises(PrefdataError, match="lacks 1 file"):
        push_export(out, "me/prefs", dry_run=True)
    (out / ".prefdata-export.json").unlink()
    with pytest.raises(PrefdataError, match="not an export prefdata wrote"):
        push_export(out, "me/prefs", dry_run=True)


@pytest.mark.parametrize("name", ["../../x", "../x", "/abs/path", "a/b", "..", "."])
def test_export_name_is_one_folder_name(tmp_path, capsys, name):
    """Before: `--name ../../x` and `--name /abs/path` wrote the export outside RUN/exports/."""
    run = make_ranked_run(tmp_path / "w" / "run", [("q", four())])
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["export", "--run", str(run.path), "--name", name])
    _one_line(e.value.code, capsys.readouterr().err, "--name must be a plain folder name")
    assert _tree(tmp_path) == before and not (run.path / "exports").exists()
