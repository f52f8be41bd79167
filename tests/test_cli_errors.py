"""User mistakes on the command line: click's usage line, one `error:` line, exit 2, never a traceback.

Checked in-process through `prefdata.cli.main` and through the installed console script, because the typer
installed here vendors its own click (`typer._click`), which `except click.ClickException` never caught.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefdata.cli import main

CASES = [
    (["generate", "--temprature", "0.5"], "Usage: prefdata generate", "did you mean --temperature?"),
    (["rank"], "Usage: prefdata rank", "Missing option '--run'"),
    (["frobnicate"], "Usage: prefdata [OPTIONS] COMMAND", "No such command 'frobnicate'"),
    (["genrate"], "Usage: prefdata [OPTIONS] COMMAND", "did you mean generate?"),
    (["export", "--run"], "Usage: prefdata export", "Option '--run' requires an argument"),
    (["generate", "--run", "r", "-n", "abc"], "Usage: prefdata generate", "Invalid value for '-n'"),
]


def _check(code: int, err: str, usage: str, needle: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(usage), err
    assert lines[1].startswith("error: ") and needle in lines[1], err


@pytest.mark.parametrize(("argv", "usage", "needle"), CASES)
def test_usage_errors_in_process(argv, usage, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    _check(e.value.code, capsys.readouterr().err, usage, needle)


def test_usage_errors_console_script():
    exe = Path(sys.executable).with_name("prefdata")
    if not exe.exists():
        pytest.skip("prefdata console script not installed in this environment")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    for argv, usage, needle in CASES[:4]:
        p = subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env, timeout=120)
        _check(p.returncode, p.stderr, usage, needle)
        assert p.stdout == ""
