"""`prefdata eval`: a checkpoint against a baseline on held-out prompts (see prefdata.eval.run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Evaluate a checkpoint against a baseline: accuracy (verifier), win rate and length-controlled win rate."
STAGES = ("generate", "rank")
STAGE_CLASSES = {"generate": "prefdata.generate:GenerateConfig", "rank": "prefdata.rank:RankConfig"}
# Fields eval sets itself for both sides (prefdata.eval.run.generate_config / rank_config).
RESERVED = {"generate": ("prompts", "prompt_field", "reference_field", "limit", "model", "allow_new_config"),
            "rank": ("kinds",)}  # fmt: skip


def command() -> Any:
    from prefdata.options import config_option, quiet_option, run_option, set_option, verb_command

    return verb_command(
        "prefdata.eval.run:EvalConfig", _eval, doc=HELP, before=("run",),
        options=[run_option("Eval run directory (created if missing; rerun to resume)."), set_option(STAGES),
                 config_option(), quiet_option()],
    )  # fmt: skip


def _eval(cfg: Any, *, run: Path, set_: list[str], quiet: bool) -> None:
    from prefdata.eval.run import eval_run
    from prefdata.options import parse_sets
    from prefdata.run.store import RunDir

    for stage, fields in parse_sets(set_, STAGE_CLASSES, RESERVED, who="eval").items():
        getattr(cfg, stage).update(fields)
    check_stages(cfg)
    for line in eval_run(RunDir(run), cfg, progress=not quiet).lines():
        typer.echo(line)


def check_stages(cfg: Any) -> None:
    """The `generate`/`rank` mappings (YAML or --set) checked and both stage configs built before anything is
    sampled: a bad value (a seed numpy cannot take, -n 0) stops eval with one line, not a traceback mid-run."""
    from prefdata.config import stage_fields
    from prefdata.errors import PrefdataError
    from prefdata.eval.run import generate_config, rank_config
    from prefdata.options import load_class

    for stage, cls in STAGE_CLASSES.items():
        setattr(cfg, stage, stage_fields(load_class(cls), getattr(cfg, stage), f"--set {stage}", RESERVED[stage], "eval"))
    for stage, build in (("generate", lambda: generate_config(cfg, cfg.model)), ("rank", lambda: rank_config(cfg, False))):
        try:
            build()
        except (PrefdataError, TypeError, ValueError) as e:
            raise PrefdataError(f"{stage} settings of eval: {e}") from None
