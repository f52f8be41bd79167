"""`prefdata push`: upload an export folder to a Hugging Face dataset repo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Push an export to the Hub (token from HF_TOKEN or `hf auth login`; never written anywhere)."


def command() -> Any:
    from prefdata.options import config_option, input_argument, verb_command

    return verb_command("prefdata.export.push:PushConfig", _push, doc=HELP, before=("folder",),
                        options=[input_argument("folder", Path, "Export folder written by `prefdata export`."), config_option()])  # fmt: skip


def _push(cfg: Any, *, folder: Path) -> None:
    from prefdata.export.push import push

    for line in push(folder, cfg).lines():
        typer.echo(line)
