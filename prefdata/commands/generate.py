"""`prefdata generate`: sample N completions per prompt into a run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from prefdata.config import build_config
from prefdata.errors import PrefdataError


def command(
    prompts: str | None = typer.Argument(None, help="Prompt file or saved datasets folder (default: bundled MT-Bench)."),
    run: Path = typer.Option(..., "--run", help="Run directory (created if missing; rerun to resume)."),
    model: str | None = typer.Option(None, "--model", help="Model folder / hub name, or served name for --backend openai."),
    n: int | None = typer.Option(None, "-n", "--n", help="Completions per prompt [4]."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Max new tokens per completion [512]."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature [0.8]."),
    top_p: float | None = typer.Option(None, "--top-p"),
    top_k: int | None = typer.Option(None, "--top-k", help="0 disables."),
    min_p: float | None = typer.Option(None, "--min-p"),
    repetition_penalty: float | None = typer.Option(None, "--repetition-penalty"),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    seed: int | None = typer.Option(None, "--seed", help="Engine seed [0]."),
    backend: str | None = typer.Option(None, "--backend", help="vllm | openai | hf [vllm]."),
    base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible server URL (with /v1)."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Env var holding the API key [OPENAI_API_KEY]."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first K prompts."),
    prompt_field: str | None = typer.Option(None, "--prompt-field", help="Prompt column (auto: messages/prompt/turns/...)."),
    system_prompt: str | None = typer.Option(None, "--system-prompt"),
    reference_field: str | None = typer.Option(None, "--reference-field", help="Add this column as a reference candidate."),
    greedy: bool | None = typer.Option(None, "--greedy/--no-greedy", help="Add one greedy candidate."),
    second_temperature: float | None = typer.Option(None, "--second-temperature"),
    second_n: int | None = typer.Option(None, "--second-n"),
    max_model_len: int | None = typer.Option(None, "--max-model-len"),
    dtype: str | None = typer.Option(None, "--dtype"),
    tensor_parallel_size: int | None = typer.Option(None, "--tensor-parallel-size", "--tp"),
    data_parallel_size: int = typer.Option(1, "--data-parallel-size", "--dp", help="vLLM engines, one per GPU group."),
    gpu_memory_utilization: float | None = typer.Option(None, "--gpu-memory-utilization"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Prompts per shard [64]."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Parallel requests (openai) [32]."),
    max_retries: int | None = typer.Option(None, "--max-retries"),
    shard: str | None = typer.Option(None, "--shard", help="I/K: only shard I of K (several machines, one run dir)."),
    allow_new_config: bool | None = typer.Option(None, "--allow-new-config", help="Keep a second sampler config in this run."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with the same fields."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Sample N completions per prompt with vLLM (in-process), an OpenAI-compatible server, or transformers."""
    from prefdata.generate import GenerateConfig, generate_run, launch_data_parallel
    from prefdata.store import RunDir

    cfg = build_config(
        GenerateConfig, config, prompts=prompts, model=model, n=n, max_tokens=max_tokens, temperature=temperature,
        top_p=top_p, top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty, stop=stop, seed=seed,
        backend=backend, base_url=base_url, api_key_env=api_key_env, limit=limit, prompt_field=prompt_field,
        system_prompt=system_prompt, reference_field=reference_field, greedy=greedy,
        second_temperature=second_temperature, second_n=second_n, max_model_len=max_model_len, dtype=dtype,
        tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
        batch_size=batch_size, concurrency=concurrency, max_retries=max_retries, shard=shard,
        allow_new_config=allow_new_config,
    )
    if data_parallel_size > 1:
        if cfg.shard or cfg.backend != "vllm":
            raise PrefdataError("--data-parallel-size works with --backend vllm and without --shard")
        argv = [a for a in sys.argv[2:]]
        code = launch_data_parallel(_strip_dp(argv), data_parallel_size, cfg.tensor_parallel_size)
        raise typer.Exit(code)
    summary = generate_run(RunDir(run), cfg, progress=not quiet)
    for line in summary.lines():
        typer.echo(line)


def _strip_dp(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--data-parallel-size", "--dp"):
            skip = True
            continue
        if a.startswith(("--data-parallel-size=", "--dp=")):
            continue
        out.append(a)
    return out
