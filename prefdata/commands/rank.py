"""`prefdata rank`: judge the candidates of a run and write judgments and rankings (see prefdata.rank)."""

from __future__ import annotations

from pathlib import Path

import typer

from prefdata.config import build_config
from prefdata.errors import PrefdataError


def command(
    run: Path = typer.Option(..., "--run", help="Run directory written by `prefdata generate`."),
    judge: str = typer.Option(None, "--judge", help="Template name (judges/), template .yaml path, reward-model folder, verify:number, verify:exact, or python:FILE.py:FUNCTION."),
    base_url: list[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server URL (repeat to spread load)."),
    judge_model: str = typer.Option(None, "--judge-model", help="Served model name, or model path for in-process vLLM."),
    position_bias: str = typer.Option(None, "--position-bias", help="both (default) | random | fixed."),
    strategy: str = typer.Option(None, "--strategy", help="iterative (default) | round-robin | scores (reward model)."),
    logprobs: bool = typer.Option(None, "--logprobs/--no-logprobs", help="One-token verdict from log-probs."),
    tie_band: float = typer.Option(None, "--tie-band", help="Logprob mode: |P(first)-0.5| <= band is a tie."),
    min_margin: float = typer.Option(None, "--min-margin", help="Scores: smaller score differences are ties."),
    seed: int = typer.Option(None, "--seed", help="Seed of the `random` order policy and the vLLM engine."),
    temperature: float = typer.Option(None, "--temperature", help="Judge sampling temperature (default 0)."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Judge reply limit (default: the template's)."),
    kinds: list[str] = typer.Option(None, "--kind", help="Rank only candidates of this kind (repeatable)."),
    concurrency: int = typer.Option(None, "--concurrency", help="OpenAI: requests in flight."),
    max_retries: int = typer.Option(None, "--max-retries", help="OpenAI: retries per call."),
    requests_per_minute: float = typer.Option(None, "--rpm", help="OpenAI: requests per minute over all URLs."),
    batch_size: int = typer.Option(None, "--batch-size", help="Judge calls per round and per judgments shard."),
    rm_batch_size: int = typer.Option(None, "--rm-batch-size", help="Reward-model forward batch."),
    rm_max_length: int = typer.Option(None, "--rm-max-length", help="Reward-model input limit (longer inputs are flagged)."),
    rm_backend: str = typer.Option(None, "--rm-backend", help="Reward-model engine: auto (vllm from 2000 candidates when installed, else hf) | hf (transformers) | vllm (pooling runner)."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Show the progress bar."),
    export: Path | None = typer.Option(None, "--export", help="Also export best-vs-worst pairs into this folder."),
    push_to_hub: str | None = typer.Option(None, "--push-to-hub", help="Also push that export to ORG/NAME (needs --export)."),
    config: Path = typer.Option(None, "--config", help="YAML file with RankConfig fields."),
) -> None:
    """Rank each prompt's candidates with a judge (iterative pairwise, round-robin, or reward-model scores)."""
    from prefdata.rank import EXIT_FAILURES, RankConfig, rank_run
    from prefdata.store import RunDir, check_writable

    cfg = build_config(
        RankConfig, config, judge=judge, base_url=base_url, judge_model=judge_model, position_bias=position_bias,
        strategy=strategy, logprobs=logprobs, tie_band=tie_band, min_margin=min_margin, seed=seed, temperature=temperature,
        max_tokens=max_tokens, kinds=kinds, concurrency=concurrency, max_retries=max_retries,
        requests_per_minute=requests_per_minute, batch_size=batch_size, rm_batch_size=rm_batch_size,
        rm_max_length=rm_max_length, rm_backend=rm_backend, progress=progress,
    )
    if push_to_hub and export is None:
        raise PrefdataError("--push-to-hub needs --export DIR (the folder that is pushed)")
    if RunDir(run).exists():
        check_writable(run, "--run")  # judgments and rankings are written there
    s = rank_run(RunDir(run), cfg)
    cons = "n/a" if s["consistency"] is None else f"{s['consistency']:.1%}"
    typer.echo(
        f"ranked {s['prompts']} prompts ({s['candidates']} candidates) with {s['strategy']}, judge {s['judge_hash']}: "
        f"{s['comparisons']} comparisons ({s['judge_calls_new']} new, {s['comparisons_per_prompt']:.1f}/prompt), "
        f"{s['ties']} ties, {s['failures']} failures, {s['inconsistent']} inconsistent (consistency {cons}); "
        f"{s['with_best_and_worst']} prompts with best and worst, {s['without_preference']} without; "
        f"{s['elapsed_s']:.1f}s"
    )
    if s.get("prompts_without_reference"):
        typer.echo(f"skipped {s['prompts_without_reference']} prompts without a reference answer (the verifier needs one; "
                   "generate with --reference-field COLUMN)")
    typer.echo(f"rankings: {Path(run) / 'rankings' / s['judge_hash']}")
    if s.get("too_long"):
        typer.echo(
            f"{s['too_long']} judge prompts do not fit the judge's context (too_long); their prompts are left out of "
            "exports: use a judge with a longer context (--max-model-len for the in-process judge)", err=True,
        )
    retry = s.get("failed_calls", 0) - s.get("too_long", 0)
    if export is not None:
        from prefdata.export import ExportConfig, export_run

        try:
            es = export_run(RunDir(run), ExportConfig(judge_hash=s["judge_hash"], out=str(export)))
        except PrefdataError as e:
            if retry <= 0:
                raise
            typer.echo(f"error: {e}", err=True)  # the exit code below says why: failed calls remain
            push_to_hub = None
        else:
            for line in es.lines():
                typer.echo(line)
        if push_to_hub:
            from prefdata.push import push_export

            res = push_export(export, push_to_hub)
            for line in res.lines():
                typer.echo(line)
    if retry > 0:
        typer.echo(
            f"{retry} judge calls failed: the rankings of {s['prompts_not_final']} prompts are not final and exports "
            f"skip them; run the same command again to retry those calls: {rerun_command()}", err=True,
        )
        raise typer.Exit(EXIT_FAILURES)


def rerun_command() -> str:
    """The command as typed (secret options masked), named `prefdata` however it was started."""
    from prefdata.store import command_line

    return "prefdata " + command_line().split(" ", 1)[-1] if " " in command_line() else command_line()
