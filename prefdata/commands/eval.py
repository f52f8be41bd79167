"""`prefdata eval`: a checkpoint against a baseline on held-out prompts (see prefdata.eval)."""

from __future__ import annotations

from pathlib import Path

import typer

from prefdata.config import build_config


def command(
    run: Path = typer.Option(..., "--run", help="Eval run directory (created if missing; rerun to resume)."),
    model: str | None = typer.Option(None, "--model", help="The model to evaluate (folder or hub name; default: demo)."),
    baseline: str | None = typer.Option(None, "--baseline", help="Baseline model (folder, hub name, demo) or a column of the prompt file with baseline answers."),
    prompts: str | None = typer.Option(None, "--prompts", help="Held-out prompt file or bundled set (e.g. arithmetic-eval)."),
    judge: str | None = typer.Option(None, "--judge", help="verify:number | verify:exact | python:FILE.py:FUNCTION | reward-model folder | judge template."),
    reference_field: str | None = typer.Option(None, "--reference-field", help="Column with the reference answer (verifiers)."),
    prompt_field: str | None = typer.Option(None, "--prompt-field"),
    limit: int | None = typer.Option(None, "--limit", help="Only the first K prompts."),
    backend: str | None = typer.Option(None, "--backend", help="Sampler for both sides: vllm | openai | hf [vllm]."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature [0: greedy]."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Max new tokens per answer [512]."),
    seed: int | None = typer.Option(None, "--seed"),
    judge_model: str | None = typer.Option(None, "--judge-model", help="Served judge name, or model path for in-process vLLM."),
    base_url: list[str] = typer.Option([], "--base-url", help="OpenAI-compatible judge endpoint(s)."),
    position_bias: str | None = typer.Option(None, "--position-bias", help="Pairwise judges: both | random | fixed [both]."),
    set_: list[str] = typer.Option([], "--set", help="generate.FIELD=VALUE or rank.FIELD=VALUE (repeatable)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with EvalConfig fields."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Evaluate a checkpoint against a baseline: accuracy (verifier), win rate and length-controlled win rate."""
    from prefdata.commands.iterate import _parse_sets
    from prefdata.eval import EvalConfig, eval_run, terminal_lines
    from prefdata.store import RunDir

    cfg = build_config(
        EvalConfig, config, model=model, baseline=baseline, prompts=prompts, judge=judge, reference_field=reference_field,
        prompt_field=prompt_field, limit=limit, backend=backend, temperature=temperature, max_tokens=max_tokens, seed=seed,
        judge_model=judge_model, base_url=base_url, position_bias=position_bias,
    )
    for stage, fields in _parse_sets(set_, stages=("generate", "rank")).items():
        getattr(cfg, stage).update(fields)
    summary = eval_run(RunDir(run), cfg, progress=not quiet)
    for line in terminal_lines(summary):
        typer.echo(line)
    typer.echo(f"summary: {run / 'eval.json'}, {run / 'eval.md'}")
