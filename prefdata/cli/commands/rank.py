"""`prefdata rank`: judge the candidates of a run and write judgments and rankings (see prefdata.rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Rank each prompt's candidates with a judge (iterative pairwise, sort, round-robin, or reward-model scores)."


def command() -> Any:
    from prefdata.options import config_option, run_option, verb_command

    return verb_command("prefdata.rank:RankConfig", _rank, doc=HELP, before=("run",),
                        options=[run_option("Run directory written by `prefdata generate`."), config_option()])  # fmt: skip


def _rank(cfg: Any, *, run: Path) -> None:
    from prefdata.rank import EXIT_FAILURES, JudgeUnreachable, rank_run
    from prefdata.run.store import RunDir, check_writable

    if RunDir(run).exists():
        check_writable(run, "--run")  # judgments and rankings are written there
    try:
        s = rank_run(RunDir(run), cfg)
    except JudgeUnreachable as e:
        raise JudgeUnreachable(f"{e}: {rerun_command()}") from None
    for line in s.lines():
        typer.echo(line)
    for line in s.problems(rerun_command()):
        typer.echo(line, err=True)
    if s.calls_to_retry > 0:
        raise typer.Exit(EXIT_FAILURES)


def rerun_command() -> str:
    """The command as typed (secret options masked), named `prefdata` however it was started."""
    from prefdata.run.store import command_line

    return "prefdata " + command_line().split(" ", 1)[-1] if " " in command_line() else command_line()
