"""`prefdata iterate`: the whole loop, round after round; rerun the same command to resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Generate → rank → export → train, for several rounds; each round samples from the last checkpoint."
STAGES = ("generate", "rank", "export", "train")


def command() -> Any:
    from prefdata.iterate import LOOP_DEFAULTS, LOOP_FLAGS, STAGE_CLASSES
    from prefdata.options import config_option, quiet_option, run_option, set_option, stage_parameters, verb_command

    workdir = run_option("Folder for all rounds (rerun to resume).", name="workdir", flags=("--workdir", "--run"))
    stage_flags = stage_parameters(LOOP_FLAGS, STAGE_CLASSES, LOOP_DEFAULTS)
    return verb_command("prefdata.iterate:IterateConfig", _iterate, doc=HELP, before=("workdir",),
                        options=[workdir, *stage_flags, set_option(STAGES), config_option(), quiet_option()])  # fmt: skip


def _iterate(cfg: Any, *, workdir: Path, set_: list[str], quiet: bool, **stage_flags: Any) -> None:
    """Stage flags (-n, --judge, ...) win over the YAML file's stage maps, and --set over both."""
    from prefdata.iterate import RESERVED, STAGE_CLASSES, iterate
    from prefdata.options import parse_sets, stage_values
    from prefdata.run.store import check_writable

    for stage, fields in stage_values(STAGE_CLASSES, stage_flags).items():
        getattr(cfg, stage).update(fields)
    for stage, fields in parse_sets(set_, STAGE_CLASSES, RESERVED).items():
        getattr(cfg, stage).update(fields)
    cfg.check_stages()  # before anything is written in the workdir
    check_writable(workdir, "--workdir")
    for line in iterate(workdir, cfg, progress=not quiet).lines():
        typer.echo(line)
