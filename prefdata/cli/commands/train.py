"""`prefdata train`: one AIPO (or DPO, IPO, SimPO, BCR, MRPO...) stage from a preference dataset to a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Train a model on chosen/rejected pairs and save it (with its tokenizer) for the next round."


def command() -> Any:
    from prefdata.options import config_option, input_argument, verb_command

    dataset = input_argument("dataset", str, "Export folder, .parquet/.jsonl file or saved `datasets` folder of pairs.")
    return verb_command("prefdata.train.config:AIPOConfig", _train, doc=HELP, before=("dataset",), check=_check,
                        options=[dataset, config_option()])  # fmt: skip


def _check(flags: dict[str, Any], config: Path | None, *, dataset: str, **_: Any) -> None:
    """Refuse a missing output folder or dataset before any model (or the trainer's imports) loads."""
    from prefdata.errors import PrefdataError

    if config is None and flags.get("output_dir") is None:
        raise PrefdataError("pass --output-dir DIR (or output_dir in --config FILE.yaml)")
    if config is None and not Path(dataset).expanduser().exists():
        raise PrefdataError(f"dataset {dataset} does not exist; pass an export folder, a .parquet/.jsonl file or a saved dataset")


def _train(cfg: Any, *, dataset: str) -> None:
    from prefdata.train import train

    for line in train(dataset, config=cfg).lines():
        typer.echo(line)
