"""`prefdata push`: upload an export folder to a Hugging Face dataset repo."""

from __future__ import annotations

from pathlib import Path

import typer

from prefdata.config import build_config


def command(
    folder: Path = typer.Argument(..., help="Export folder written by `prefdata export`."),
    repo_id: str | None = typer.Option(None, "--repo-id", help="ORG/NAME of the dataset repo."),
    private: bool | None = typer.Option(None, "--private", help="Create the repo private."),
    dry_run: bool | None = typer.Option(None, "--dry-run", help="List what would be uploaded; contact nothing."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Hub URL [HF_ENDPOINT or huggingface.co]."),
    revision: str | None = typer.Option(None, "--revision", help="Branch to commit to [main]."),
    message: str | None = typer.Option(None, "--message", help="Commit message."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with the same fields."),
) -> None:
    """Push an export to the Hub (token from HF_TOKEN or `hf auth login`; never written anywhere)."""
    from prefdata.errors import PrefdataError
    from prefdata.push import PushConfig, push_export

    cfg = build_config(
        PushConfig, config, repo_id=repo_id, private=private, dry_run=dry_run, endpoint=endpoint,
        revision=revision, commit_message=message,
    )  # fmt: skip
    if not cfg.repo_id:
        raise PrefdataError("--repo-id ORG/NAME is required")
    result = push_export(
        folder, cfg.repo_id, private=cfg.private, dry_run=cfg.dry_run, endpoint=cfg.endpoint,
        revision=cfg.revision, commit_message=cfg.commit_message,
    )  # fmt: skip
    for line in result.lines():
        typer.echo(line)
