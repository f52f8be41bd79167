"""`prefdata iterate`: the whole loop, round after round; rerun the same command to resume."""

from __future__ import annotations

from pathlib import Path

import typer

from prefdata.config import build_config
from prefdata.errors import PrefdataError


def _parse_sets(items: list[str], stages: tuple[str, ...] = ("generate", "rank", "export", "train")) -> dict[str, dict[str, object]]:
    """`--set train.learning_rate=1e-6` → {"train": {"learning_rate": 1e-6}} (values parsed as YAML)."""
    import yaml

    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, fld = key.partition(".")
        if not sep or not dot or stage not in stages:
            raise PrefdataError(f"--set {item!r}: write STAGE.FIELD=VALUE with STAGE one of {', '.join(stages)}")
        out.setdefault(stage, {})[fld] = yaml.safe_load(value)
    return out


def command(
    workdir: Path = typer.Option(..., "--workdir", "--run", help="Folder for all rounds (rerun to resume)."),
    rounds: int | None = typer.Option(None, "--rounds", help="Number of rounds [2]."),
    model: str | None = typer.Option(None, "--model", help="Starting policy (default: the demo model)."),
    prompts: str | None = typer.Option(None, "--prompts", help="Prompt file (default: bundled MT-Bench)."),
    prompts_per_round: int | None = typer.Option(None, "--prompts-per-round", help="New prompt slice per round [16]."),
    self_instruct: bool | None = typer.Option(None, "--self-instruct/--no-self-instruct", help="Policy writes each round's prompts."),
    self_instruct_prompts: int | None = typer.Option(None, "--self-instruct-prompts"),
    n: int | None = typer.Option(None, "-n", "--n", help="Completions per prompt [4]."),
    temperature: float | None = typer.Option(None, "--temperature"),
    max_tokens: int | None = typer.Option(None, "--max-tokens"),
    judge: str | None = typer.Option(None, "--judge", help="Judge template or reward-model folder [verdict-only]."),
    judge_model: str | None = typer.Option(None, "--judge-model"),
    base_url: list[str] = typer.Option([], "--base-url", help="Judge endpoint(s); none: in-process vLLM."),
    position_bias: str | None = typer.Option(None, "--position-bias", help="Judge order policy: both | random | fixed [both]."),
    keep_truncated: bool | None = typer.Option(None, "--keep-truncated", help="Keep pairs with a completion cut by max_tokens."),
    loss_type: str | None = typer.Option(None, "--loss", help="aipo | dpo | ... [aipo]."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Training steps per round (-1: one epoch)."),
    eval_prompts: str | None = typer.Option(None, "--eval-prompts", help="Held-out eval prompts (file or bundled set): every round is evaluated on them."),
    eval_size: int | None = typer.Option(None, "--eval-size", help="Eval prompts: first K of --eval-prompts, or K of --prompts kept apart by id [0: no eval]."),
    eval_previous: bool | None = typer.Option(None, "--eval-previous/--no-eval-previous", help="Also evaluate each round against the previous one."),
    eval_max_tokens: int | None = typer.Option(None, "--eval-max-tokens", help="Eval answer limit [--max-tokens]."),
    set_: list[str] = typer.Option([], "--set", help="STAGE.FIELD=VALUE for any stage setting (repeatable)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with the same fields (and generate/rank/export/train maps)."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Generate → rank → export → train, for several rounds; each round samples from the last checkpoint."""
    from prefdata.iterate import IterateConfig, iterate

    cfg = build_config(
        IterateConfig, config, rounds=rounds, model=model, prompts=prompts, prompts_per_round=prompts_per_round,
        self_instruct=self_instruct, self_instruct_prompts=self_instruct_prompts, n=n, temperature=temperature,
        max_tokens=max_tokens, judge=judge, judge_model=judge_model, base_url=base_url, position_bias=position_bias,
        keep_truncated=keep_truncated, loss_type=loss_type,
        max_steps=max_steps, eval_prompts=eval_prompts, eval_size=eval_size, eval_previous=eval_previous,
        eval_max_tokens=eval_max_tokens,
    )
    for stage, fields in _parse_sets(set_).items():
        getattr(cfg, stage).update(fields)
    cfg.check_stages()  # before anything is written in the workdir
    from prefdata.store import check_writable

    check_writable(workdir, "--workdir")
    table = iterate(workdir, cfg, progress=not quiet)
    typer.echo(f"\nrounds finished: {table.height}; summary in {workdir / 'rounds.md'} and {workdir / 'rounds.png'}")
    with pl_config():
        typer.echo(str(table))


def pl_config():
    import polars as pl

    return pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=160)
