"""`prefdata push`: upload an export folder to a Hugging Face dataset repo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Push an export to the Hub (token from HF_TOKEN or `hf auth login`; never written anywhere)."


def command() -> Any:
    from prefdata.options import config_option, verb_command, verb_option

    folder = verb_option("folder", Path, default=..., argument=True, help="Export folder written by `prefdata export`.")
    return verb_command("prefdata.push:PushConfig", _push, doc=HELP, before=("folder",), options=[folder, config_option()])


def _push(cfg: Any, *, folder: Path) -> None:
    from prefdata.errors import PrefdataError
    from prefdata.push import push_export

    if not cfg.repo_id:
        raise PrefdataError("--repo-id ORG/NAME is required")
    result = push_export(
        folder, cfg.repo_id, private=cfg.private, dry_run=cfg.dry_run, endpoint=cfg.endpoint,
        revision=cfg.revision, commit_message=cfg.commit_message,
    )  # fmt: skip
    for line in result.lines():
        typer.echo(line)
