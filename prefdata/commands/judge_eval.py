"""`prefdata judge-eval`: agreement of a judge with human chosen/rejected labels (see prefdata.judge_eval)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefdata.config import build_config


def command(
    data: str = typer.Option(None, "--data", help="JSONL with chosen/rejected transcripts (HH-RLHF format)."),
    judge: str = typer.Option(None, "--judge", help="Template name, template .yaml path, or reward-model folder."),
    base_url: list[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server URL (repeatable)."),
    judge_model: str = typer.Option(None, "--judge-model", help="Served model name, or model path for in-process vLLM."),
    logprobs: bool = typer.Option(None, "--logprobs/--no-logprobs", help="One-token verdict from log-probs."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Judge reply limit."),
    concurrency: int = typer.Option(None, "--concurrency", help="OpenAI: requests in flight."),
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N rows."),
    out: str = typer.Option(None, "--out", help="Write per-row results (.parquet) and the summary (.json) here."),
    progress: bool = typer.Option(None, "--progress/--no-progress"),
    config: Path = typer.Option(None, "--config", help="YAML file with JudgeEvalConfig fields."),
) -> None:
    """Measure a judge against human preference labels: agreement, consistency under swapped order, position bias."""
    from prefdata.judge_eval import JudgeEvalConfig, evaluate

    cfg = build_config(
        JudgeEvalConfig, config, data=data, judge=judge, base_url=base_url, judge_model=judge_model, logprobs=logprobs,
        max_tokens=max_tokens, concurrency=concurrency, limit=limit, out=out, progress=progress,
    )
    typer.echo(json.dumps(evaluate(cfg), indent=2))
