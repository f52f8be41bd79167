"""Past one machine: generate, rank, eval and iterate's stages on a Ray cluster (`--engine ray`); the driver keeps
the run directory.

The `--engine` and `--ray-address` options of the stages are declared here once (the stage configs carry them)."""

from __future__ import annotations

from typing import Any

from prefdata.errors import PrefdataError
from prefdata.options import opt

RUNNERS = ("local", "ray")  # where a stage's engines run: this process, or actors on a Ray cluster

# The fields that say where, on how many engines and with which engine kept how a stage runs, never what it
# computes: iterate leaves them out when it compares a rerun's loop config with the first run's, so a local and a Ray
# loop resume each other, and so does a loop rerun with or without --reuse-engine.
PLACEMENT_FIELDS = ("engine", "ray_address", "data_parallel_size", "dp", "reuse_engine")


def ray_address_field() -> Any:
    """The `--ray-address` option; where the cluster is does not change results."""
    return opt(None, "--engine ray: the cluster to use; none: RAY_ADDRESS, else a cluster started with `ray start` on "
                     "this machine, else a local Ray started for this command and stopped with it.", identity=False)


def check_runner(engine: str) -> None:
    if engine not in RUNNERS:
        raise PrefdataError(f"--engine must be one of {', '.join(RUNNERS)}, got {engine!r}")
