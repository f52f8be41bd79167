"""The data-parallel launcher of `generate --dp N` (issue 20 item 12), with real child processes: small Python
commands stand in for the `prefdata generate --shard` children, which would each start a vLLM engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prefdata.cli.commands import generate as gen_cmd
from prefdata.run.interrupts import wait_gone

REPO = Path(__file__).resolve().parents[1]


def _py(code: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-c", code], dict(os.environ)


def test_a_child_killed_by_a_signal_fails_the_launch():
    """Popen gives -9 for a SIGKILLed child: max(-9, 0) was 0, so one killed and one finished child exited 0."""
    killed = _py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert gen_cmd.run_children([killed, _py("pass")]) == 128 + signal.SIGKILL
    assert gen_cmd.run_children([_py("import sys; sys.exit(3)"), _py("pass")]) == 3
    assert gen_cmd.run_children([_py("pass"), _py("pass")]) == 0


def test_verbose_before_the_verb_is_not_passed_as_a_second_verb(tmp_path, monkeypatch, capsys):
    """`prefdata --verbose generate ... --dp 2` gave each child `generate generate ...`."""
    from prefdata.cli import main

    started: list[list[str]] = []
    monkeypatch.setattr(gen_cmd, "run_children", lambda children: started.extend(c for c, _ in children) or 0)
    argv = ["--verbose", "generate", "p.jsonl", "--run", str(tmp_path / "run"), "--dp", "2", "-n", "1"]
    monkeypatch.setattr(sys, "argv", ["prefdata", *argv])
    # --verbose sets PREFDATA_VERBOSE in this process; unset again after the test, or every later subprocess test
    # runs verbose (no logs/ file: test_secrets_leak; and test_interrupts' Ctrl-C case failed after it)
    monkeypatch.setenv("PREFDATA_VERBOSE", "")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, capsys.readouterr().err
    assert len(started) == 2
    for i, cmd in enumerate(started):
        args = cmd[cmd.index("prefdata.cli") + 1 :]
        assert args == ["--verbose", "generate", "p.jsonl", "--run", str(tmp_path / "run"), "-n", "1",
                        "--shard", f"{i}/2", "--data-parallel-size", "1"]  # fmt: skip


def test_sigterm_to_the_launcher_reaches_the_children(tmp_path):
    """SIGTERM (raised like Ctrl-C in the CLI process) stops every child, and the launcher exits non-zero."""
    # one write per line: under PYTHONUNBUFFERED print() writes the pid and its newline apart, and the two children
    # interleave them on the shared pipe (a line that is only a newline)
    child = "import os, time; os.write(1, b\"%d\\n\" % os.getpid()); time.sleep(120)"
    launcher = textwrap.dedent(f"""
        import os, sys
        from prefdata.run import interrupts
        from prefdata.cli.commands.generate import run_children
        interrupts.install()
        children = [([sys.executable, "-c", {child!r}], dict(os.environ))] * 2
        try:
            sys.exit(run_children(children, grace_s=5))
        except KeyboardInterrupt:
            sys.exit(143)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    pids = [int(p.stdout.readline()) for _ in range(2)]
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    assert wait_gone(pids, 10) == []


def test_stop_kills_a_child_that_ignores_sigterm():
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", ignores], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    gen_cmd._stop([proc], grace_s=1)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - t0 < 10
