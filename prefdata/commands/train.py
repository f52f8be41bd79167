"""`prefdata train`: one AIPO (or DPO, IPO, SimPO, BCR, MRPO...) stage from a preference dataset to a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    dataset: str = typer.Argument(..., help="Export folder, .parquet/.jsonl file or saved `datasets` folder of pairs."),
    model: str = typer.Option(None, "--model", help="Model folder or hub name to train (default: the demo model)."),
    output_dir: str = typer.Option(None, "--output-dir", help="Where checkpoints and the final bf16 model go."),
    loss: str = typer.Option(None, "--loss", help="aipo (default), alpha_dpo, dpo, dpo_nll, ipo, simpo, bcr, mrpo."),
    beta: float = typer.Option(None, "--beta", help="Temperature β (default 0.1)."),
    alpha: float = typer.Option(None, "--alpha", help="Agreement coefficient α (default 0.09)."),
    lambda_: float = typer.Option(None, "--lambda", help="NLL weight λ (default 0.5)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after K optimizer steps (default: 1 epoch)."),
    learning_rate: float = typer.Option(None, "--lr", help="Learning rate (default 5e-7)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Pairs per device per step (default 8)."),
    ref_model: list[str] = typer.Option(None, "--ref-model", help="Reference model folder; repeat for mrpo."),
    resume: str = typer.Option(
        None, "--resume", help="Checkpoint folder to resume from, or 'latest' (a rerun resumes by itself)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Delete the checkpoints and summary of a previous run in --output-dir; start over."
    ),
    config: str = typer.Option(None, "--config", help="YAML file of AIPOConfig fields; flags override it."),
    dtype: str = typer.Option(None, "--dtype", help="Loaded weights: auto (float32 full fine-tune, bfloat16 LoRA), float32, bfloat16, float16."),
    lora_r: int = typer.Option(None, "--lora-r", help="Train LoRA adapters of rank R instead of every weight (default: off)."),
    lora_alpha: float = typer.Option(None, "--lora-alpha", help="LoRA alpha (default 2·R)."),
    lora_dropout: float = typer.Option(None, "--lora-dropout", help="LoRA dropout (default 0.05)."),
    lora_target_modules: list[str] = typer.Option(
        None, "--lora-target-modules", help="Module to adapt, repeatable or comma-separated (default: all linear layers)."
    ),
    load_in_4bit: bool = typer.Option(False, "--load-in-4bit", help="QLoRA: 4-bit NF4 base (CUDA GPU + bitsandbytes)."),
    no_merge: bool = typer.Option(False, "--no-merge", help="Save only the LoRA adapter (for vLLM enable_lora), no merged model."),
) -> None:
    """Train a model on chosen/rejected pairs and save it (with its tokenizer) for the next round."""
    from prefdata.config import build_config
    from prefdata.errors import PrefdataError
    from prefdata.train import train
    from prefdata.train.config import AIPOConfig

    flags = {
        "output_dir": output_dir,
        "loss_type": loss,
        "beta": beta,
        "alpha": alpha,
        "lambda_": lambda_,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "per_device_train_batch_size": batch_size,
        "ref_models": ref_model,
        "dtype": dtype,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "lora_target_modules": [m.strip() for v in lora_target_modules or [] for m in v.split(",") if m.strip()],
        "load_in_4bit": True if load_in_4bit else None,
        "lora_merge": False if no_merge else None,
    }
    if config is None and output_dir is None:
        raise PrefdataError("pass --output-dir DIR (or output_dir in --config FILE.yaml)")
    if config is None and not Path(dataset).expanduser().exists():  # fail before loading any model
        raise PrefdataError(f"dataset {dataset} does not exist; pass an export folder, a .parquet/.jsonl file or a saved dataset")
    cfg = build_config(AIPOConfig, config, **flags)
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
