"""`prefdata generate`: sample N completions per prompt into a run directory.

Data parallel (`--data-parallel-size D`) lives here, not in the library: it starts D copies of this command,
each with `--shard i/D` and its own GPUs, all writing into the same run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
    from prefdata.run.store import RunDir

    if (cfg.data_parallel_size or 1) > 1 and cfg.engine == "local":
        if cfg.shard or cfg.backend != "vllm":
            raise PrefdataError("--data-parallel-size works with --backend vllm and without --shard")
        raise typer.Exit(launch_data_parallel(verb_args(sys.argv[1:]), cfg.data_parallel_size, cfg.tensor_parallel_size))
    summary = generate_run(RunDir(run), cfg, progress=not quiet)
    for line in summary.lines():
        typer.echo(line)


def launch_data_parallel(argv: list[str], dp: int, tp: int) -> int:
    """Data parallel inside a node: one `prefdata generate --shard i/dp` process per GPU group; the worst exit code.

    Each process sees `tp` GPUs (CUDA_VISIBLE_DEVICES) and writes into the same run directory. `argv`: generate's
    own arguments (see `verb_args`); the root --verbose is passed on as a root option.
    """
    from prefdata import console

    root = ["--verbose"] if console.verbose() else []
    children = []
    for i in range(dp):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(str(i * tp + k) for k in range(tp)))
        cmd = [sys.executable, "-m", "prefdata.cli", *root, "generate", *argv, "--shard", f"{i}/{dp}",
               "--data-parallel-size", "1"]  # fmt: skip
        children.append((cmd, env))
    return run_children(children)


def run_children(children: list[tuple[list[str], dict[str, str]]], grace_s: float = 30.0) -> int:
    """Start every command, wait for all, return the worst exit status (a child killed by signal N counts as
    128 + N, as a shell reports it, never as the 0 that max() of Popen's negative codes gave).

    On any exception while waiting (Ctrl-C, or SIGTERM/SIGHUP, which the CLI raises as KeyboardInterrupt) the
    children are sent SIGTERM, waited for up to `grace_s`, then killed, and the exception goes on: no child
    outlives the launcher and its exit status is non-zero."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd, env in children:
            procs.append(subprocess.Popen(cmd, env=env))
        codes = [p.wait() for p in procs]
    except BaseException:
        _stop(procs, grace_s)
        raise
    return max((c if c > 0 else 128 - c for c in codes if c != 0), default=0)


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every live child, wait up to `grace_s` for all of them together, SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def verb_args(argv: list[str]) -> list[str]:
    """generate's own arguments from the command line (sys.argv[1:]): what follows the verb, where root options
    such as --verbose may come first (`prefdata --verbose generate ...` once gave each child `generate generate`).
    The root takes --verbose anywhere, so it is dropped here and passed on as a root option."""
    args = argv[argv.index("generate") + 1 :] if "generate" in argv else list(argv)
    return _strip_dp([a for a in args if a != "--verbose"])


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
