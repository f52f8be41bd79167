"""`prefdata generate`: sample N completions per prompt into a run directory.

Data parallel (`--data-parallel-size D`) lives here, not in the library: it starts D copies of this command,
each with `--shard i/D` and its own GPUs, all writing into the same run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

from prefdata.errors import PrefdataError

HELP = "Sample N completions per prompt with vLLM (in-process), an OpenAI-compatible server, or transformers."


def command() -> Any:
    from prefdata.options import config_option, quiet_option, run_option, verb_command

    return verb_command(
        "prefdata.generate:GenerateConfig", _generate, doc=HELP, positional=("prompts",), before=("run",),
        options=[run_option("Run directory (created if missing; rerun to resume)."), config_option(), quiet_option()],
    )  # fmt: skip


def _generate(cfg: Any, *, run: Path, quiet: bool) -> None:
    from prefdata.generate import generate_run
    from prefdata.store import RunDir

    if cfg.data_parallel_size > 1:
        if cfg.shard or cfg.backend != "vllm":
            raise PrefdataError("--data-parallel-size works with --backend vllm and without --shard")
        raise typer.Exit(launch_data_parallel(_strip_dp(sys.argv[2:]), cfg.data_parallel_size, cfg.tensor_parallel_size))
    summary = generate_run(RunDir(run), cfg, progress=not quiet)
    for line in summary.lines():
        typer.echo(line)


def launch_data_parallel(argv: list[str], dp: int, tp: int) -> int:
    """Data parallel inside a node: one `prefdata generate --shard i/dp` process per GPU group; the worst exit code.

    Each process sees `tp` GPUs (CUDA_VISIBLE_DEVICES) and writes into the same run directory.
    """
    procs = []
    for i in range(dp):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(str(i * tp + k) for k in range(tp)))
        cmd = [sys.executable, "-m", "prefdata.cli", "generate", *argv, "--shard", f"{i}/{dp}", "--data-parallel-size", "1"]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    return max(codes)


def _strip_dp(argv: list[str]) -> list[str]:
    """The command line without its --data-parallel-size (each child gets `--data-parallel-size 1`)."""
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
