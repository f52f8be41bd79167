"""`train()`: one training stage from a preference dataset to a checkpoint vLLM can load next round."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError

logger = logging.getLogger(__name__)

SUMMARY_FILE = "prefdata_train.json"


def train(
    dataset: str | Path,
    model: str | None = None,
    output_dir: str | Path | None = None,
    *,
    config: Any = None,
    resume_from_checkpoint: str | bool | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train `model` (default: the demo model) on `dataset` and save a bf16 checkpoint into `output_dir`.

    Args:
        dataset: an export folder, a .parquet/.jsonl file or a saved `datasets` folder of pairs.
        model: a model folder or hub name; None trains the demo model. It is also the reference unless
            `ref_models` says otherwise.
        output_dir: where checkpoints and the final model go (overrides `config.output_dir`).
        config: an `AIPOConfig`; None builds one from the defaults.
        resume_from_checkpoint: a checkpoint folder, or True for the latest in `output_dir`.
        **overrides: `AIPOConfig` fields (loss_type="dpo", beta=0.5, max_steps=10, ref_models=[...], ...).

    Returns:
        A summary: output_dir, global_step, train_loss, the last logged train metrics, eval metrics if the dataset
        has a test split, truncation counts, and the reference cache files. Also written to
        `output_dir/prefdata_train.json`.
    """
    from prefdata.models import resolve_model
    from prefdata.train.config import AIPOConfig
    from prefdata.train.data import default_cache_dir, load_pairs, truncation_counts
    from prefdata.train.trainer import AIPOTrainer

    if output_dir is None and config is None:
        raise PrefdataError("train needs an output directory (--output-dir)")
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir)
    try:
        if config is None:
            cfg = AIPOConfig(**overrides)
        else:
            cfg = dataclasses.replace(config, **overrides) if overrides else config
    except (TypeError, ValueError) as e:
        raise PrefdataError(f"invalid training config: {e}") from e
    train_ds, eval_ds = load_pairs(dataset)  # before any model is loaded: a bad dataset fails fast
    model_path = resolve_model(model)
    for ref in cfg.ref_models:
        resolve_model(ref)
    if cfg.ref_cache_dir is None:
        cfg.ref_cache_dir = str(default_cache_dir(dataset))

    trainer = AIPOTrainer(model_path, cfg, train_ds, eval_ds)
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    out = Path(cfg.output_dir)
    trainer.save_model(str(out))
    eval_metrics = trainer.evaluate() if eval_ds is not None else {}
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    summary = {
        "output_dir": str(out),
        "model": model_path,
        "loss_type": cfg.loss_type,
        "pairs": len(train_ds),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_runtime": result.metrics.get("train_runtime"),
        "first_logged": logged[0] if logged else {},
        "last_logged": logged[-1] if logged else {},
        "eval": eval_metrics,
        **truncation_counts(trainer.train_dataset),
        "ref_cache": trainer.ref_cache_paths,
    }
    if trainer.is_world_process_zero():
        to_bf16_safetensors(out)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def to_bf16_safetensors(folder: Path) -> None:
    """Rewrite the saved weights as bf16 (training keeps float32 master weights) so vLLM loads a compact model."""
    import torch
    from safetensors.torch import load_file, save_file

    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(f).items()}
        total += sum(v.numel() * v.element_size() for v in tensors.values())
        save_file(tensors, f, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2))
    cfg = folder / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        data["dtype"] = "bfloat16"
        data.pop("torch_dtype", None)
        cfg.write_text(json.dumps(data, indent=2))
