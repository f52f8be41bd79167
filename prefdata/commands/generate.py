"""`prefdata generate`: sample N completions per prompt into a run directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from prefdata.errors import PrefdataError

HELP = "Sample N completions per prompt with vLLM (in-process), an OpenAI-compatible server, or transformers."


def command() -> Any:
    from prefdata.options import config_option, quiet_option, run_option, verb_command, verb_option

    return verb_command(
        "prefdata.generate:GenerateConfig", _generate, doc=HELP, positional=("prompts",), before=("run",),
        options=[
            run_option("Run directory (created if missing; rerun to resume)."),
            verb_option("data_parallel_size", int, "--data-parallel-size", "--dp", default=1,
                        help="vLLM engines, one per GPU group."),
            config_option(), quiet_option(),
        ],
    )  # fmt: skip


def _generate(cfg: Any, *, run: Path, data_parallel_size: int, quiet: bool) -> None:
    from prefdata.generate import generate_run, launch_data_parallel
    from prefdata.store import RunDir

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
