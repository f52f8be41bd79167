"""`prefdata eval`: a checkpoint against a baseline on held-out prompts (see prefdata.eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Evaluate a checkpoint against a baseline: accuracy (verifier), win rate and length-controlled win rate."
STAGES = ("generate", "rank")


def command() -> Any:
    from prefdata.options import config_option, quiet_option, run_option, set_option, verb_command

    return verb_command(
        "prefdata.eval:EvalConfig", _eval, doc=HELP, before=("run",),
        options=[run_option("Eval run directory (created if missing; rerun to resume)."), set_option(STAGES),
                 config_option(), quiet_option()],
    )  # fmt: skip


def _eval(cfg: Any, *, run: Path, set_: list[str], quiet: bool) -> None:
    from prefdata.eval import eval_run
    from prefdata.options import parse_sets
    from prefdata.store import RunDir

    for stage, fields in parse_sets(set_, STAGES).items():
        getattr(cfg, stage).update(fields)
    for line in eval_run(RunDir(run), cfg, progress=not quiet).lines():
        typer.echo(line)
