"""`prefdata export`: write one judge's rankings of a run as a dataset folder with its card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Turn rankings into chosen/rejected pairs (or rankings / KTO rows) with a Hub-ready dataset card."


def command() -> Any:
    from prefdata.options import config_option, run_option, verb_command

    return verb_command("prefdata.export:ExportConfig", _export, doc=HELP, before=("run",),
                        options=[run_option("Run directory with rankings."), config_option()])  # fmt: skip


def _export(cfg: Any, *, run: Path) -> None:
    from prefdata.export import export_run
    from prefdata.run.store import RunDir

    summary = export_run(RunDir(run), cfg)
    for line in summary.lines():
        typer.echo(line)
