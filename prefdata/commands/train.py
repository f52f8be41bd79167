"""`prefdata train`: one AIPO (or DPO, IPO, SimPO, BCR, MRPO...) stage from a preference dataset to a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

HELP = "Train a model on chosen/rejected pairs and save it (with its tokenizer) for the next round."


def command() -> Any:
    from prefdata.options import config_option, verb_command, verb_option

    return verb_command(
        "prefdata.train.config:AIPOConfig", _train, doc=HELP, before=("dataset", "model"), check=_check,
        options=[
            verb_option("dataset", str, default=..., argument=True,
                        help="Export folder, .parquet/.jsonl file or saved `datasets` folder of pairs."),
            verb_option("model", str | None, "--model", help="Model folder or hub name to train (default: the demo model)."),
            verb_option("resume", str | None, "--resume",
                        help="Checkpoint folder to resume from, or 'latest' (a rerun resumes by itself)."),
            verb_option("overwrite", bool, "--overwrite", default=False,
                        help="Delete the checkpoints and summary of a previous run in --output-dir; start over."),
            config_option(),
        ],
    )  # fmt: skip


def _check(flags: dict[str, Any], config: Path | None, *, dataset: str, **_: Any) -> None:
    """Refuse a missing output folder or dataset before any model (or the trainer's imports) loads."""
    from prefdata.errors import PrefdataError

    if config is None and flags.get("output_dir") is None:
        raise PrefdataError("pass --output-dir DIR (or output_dir in --config FILE.yaml)")
    if config is None and not Path(dataset).expanduser().exists():
        raise PrefdataError(f"dataset {dataset} does not exist; pass an export folder, a .parquet/.jsonl file or a saved dataset")


def _train(cfg: Any, *, dataset: str, model: str | None, resume: str | None, overwrite: bool) -> None:
    from prefdata.train import train

    resume_arg: str | bool | None = True if resume == "latest" else resume
    summary = train(dataset, model, config=cfg, resume_from_checkpoint=resume_arg, overwrite=overwrite)
    last = summary["last_logged"]
    typer.echo(
        json.dumps(
            {
                "output_dir": summary["output_dir"],
                "global_step": summary["global_step"],
                "train_loss": round(summary["train_loss"], 4),
                "accuracy": last.get("rewards/accuracies"),
                "margin": last.get("rewards/margins"),
                **{k: v for k, v in summary.items() if k.startswith("truncated/")},
                **({"already_finished": True} if summary.get("already_finished") else {}),
            }
        )
    )
