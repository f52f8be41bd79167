"""`train()`: one training stage from a preference dataset to a checkpoint vLLM can load next round."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.run.records import TRAIN_SUMMARY
from prefdata.run.store import stage_lock
from prefdata.summary import RecordSummary
from prefdata.train.resume import (
    checkpoints,
    clear_run,
    is_unfinished,
    read_marker,
    refuse_other_run,
    remove_incomplete,
    run_identity,
    state_of,
)

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class TrainSummary(RecordSummary):
    """prefdata_train.json's record (its metric keys depend on the loss and the dataset); the terminal gets one
    JSON line of the numbers a user checks first."""

    def lines(self) -> list[str]:
        s, last = self.record, self.record["last_logged"]
        brief = {
            "output_dir": s["output_dir"],
            "global_step": s["global_step"],
            "train_loss": round(s["train_loss"], 4),
            "accuracy": last.get("rewards/accuracies"),
            "margin": last.get("rewards/margins"),
            **{k: v for k, v in s.items() if k.startswith("truncated/")},
            **({"already_finished": True} if s.get("already_finished") else {}),
        }
        return [json.dumps(brief)]



def train(
    dataset: str | Path,
    model: str | None = None,
    output_dir: str | Path | None = None,
    *,
    config: Any = None,
    resume_from_checkpoint: str | bool | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> TrainSummary:
    """Train `model` (default: the demo model) on `dataset` and save a bf16 checkpoint into `output_dir`.

    Rerunning the same call resumes: an `output_dir` that holds complete checkpoints of the same run (same
    settings, models and pairs) continues from the latest one, and a finished run only returns its summary.
    Checkpoints of a different run are refused unless `overwrite` is set.

    Args:
        dataset: an export folder, a .parquet/.jsonl file or a saved `datasets` folder of pairs.
        model: a model folder or hub name; None: `config.model`, else the demo model. It is also the reference
            unless `ref_models` says otherwise.
        output_dir: where checkpoints and the final model go (overrides `config.output_dir`).
        config: an `AIPOConfig`; None builds one from the defaults.
        resume_from_checkpoint: a checkpoint folder, or True (or "latest") for the latest in `output_dir` (the
            latest complete checkpoint is used anyway; True with none is an error); None:
            `config.resume_from_checkpoint`.
        overwrite: remove the checkpoints and summary a previous run left in `output_dir` and start over (also
            when `config.overwrite` is set).
        **overrides: `AIPOConfig` fields (loss_type="dpo", beta=0.5, max_steps=10, ref_models=[...], ...).

    Returns:
        A `TrainSummary`, read like the dict it holds: output_dir, global_step, train_loss, the last logged train
        metrics, eval metrics if the dataset has a test split, truncation counts, the reference cache files and the
        run fingerprint. Also written to `output_dir/prefdata_train.json`.
    """
    from prefdata.models import resolve_model
    from prefdata.train import lora
    from prefdata.train.config import AIPOConfig
    from prefdata.train.data import default_cache_dir, load_pairs

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
    model = cfg.model if model is None else model
    overwrite = overwrite or cfg.overwrite
    resume = cfg.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
    resume = True if resume == "latest" else resume
    if cfg.load_in_4bit:
        lora.check_4bit_available()
    train_ds, eval_ds = load_pairs(dataset)  # before any model is loaded: a bad dataset fails fast
    model_path = resolve_model(model)
    for ref in cfg.ref_models:
        resolve_model(ref)
    if cfg.ref_cache_dir is None:
        cfg.ref_cache_dir = str(default_cache_dir(dataset))

    out = Path(cfg.output_dir)
    # Two trains into one folder would mix their checkpoints; under several processes the main one holds the lock.
    main = int(os.environ.get("RANK", "0")) == 0
    with stage_lock(out, "train", flag="--output-dir") if main else contextlib.nullcontext():
        return TrainSummary(_train_in(out, cfg, model_path, train_ds, eval_ds, resume, overwrite))


def _train_in(out: Path, cfg: Any, model_path: str, train_ds: Any, eval_ds: Any, resume_from_checkpoint: str | bool | None,
              overwrite: bool) -> dict[str, Any]:
    from transformers.trainer_callback import TrainerState

    from prefdata.train import lora
    from prefdata.train.data import truncation_counts
    from prefdata.train.trainer import AIPOTrainer

    identity = run_identity(cfg, model_path, train_ds.to_list(), eval_ds.to_list() if eval_ds is not None else None)
    if overwrite:
        clear_run(out)
    finished = _finished_summary(out, identity, resume_from_checkpoint)
    if finished is not None:
        return finished
    resume_path = _resume_point(out, identity, resume_from_checkpoint)

    trainer = AIPOTrainer(model_path, cfg, train_ds, eval_ds, run_identity=identity)
    start_step = state_of(resume_path)["global_step"] if resume_path else 0
    if resume_path is not None and start_step >= state_of(resume_path)["max_steps"]:
        # Killed after the last checkpoint but before the summary: the weights are final, do not train again.
        trainer._load_from_checkpoint(str(resume_path))
        trainer.state = TrainerState.load_from_json(str(resume_path / "trainer_state.json"))
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        train_loss, runtime = (sum(losses) / len(losses) if losses else float("nan")), None
    else:
        result = trainer.train(resume_from_checkpoint=str(resume_path) if resume_path else None)
        train_loss, runtime = result.training_loss, result.metrics.get("train_runtime")
    trainer.save_model(str(lora.adapter_dir(out) if cfg.lora_r else out))
    eval_metrics = trainer.evaluate() if eval_ds is not None else {}
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    summary = {
        "output_dir": str(out),
        "model": model_path,
        "loss_type": cfg.loss_type,
        "pairs": len(train_ds),
        "global_step": trainer.state.global_step,
        "resumed_from_step": start_step,
        "train_loss": train_loss,
        "train_runtime": runtime,
        "first_logged": logged[0] if logged else {},
        "last_logged": logged[-1] if logged else {},
        "eval": eval_metrics,
        **truncation_counts(trainer.train_dataset),
        "ref_cache": trainer.ref_cache_paths,
        "ref_pairs_computed": trainer.ref_pairs_computed,  # this process's share of the reference pass
        "fingerprint": identity["fingerprint"],
        "config": identity["config"],
    }
    if trainer.is_world_process_zero():
        if cfg.lora_r:
            summary["lora"] = lora.finalize(out, model_path, cfg)
        else:
            to_dtype_safetensors(out, cfg.save_dtype)
        tmp = out / f".{TRAIN_SUMMARY}.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, out / TRAIN_SUMMARY)  # last: its presence means the final model is complete
    return summary


def _finished_summary(out: Path, identity: dict[str, Any], resume: str | bool | None) -> dict[str, Any] | None:
    """The saved summary when `out` holds this run, finished; refuse a finished different run."""
    f = out / TRAIN_SUMMARY
    if isinstance(resume, str) or not f.is_file():
        return None
    try:
        saved = json.loads(f.read_text())
    except ValueError:
        return None  # a summary cut short: the final save did not finish, so train (or resume) again
    if saved.get("fingerprint") != identity["fingerprint"]:
        raise refuse_other_run(out, "the final model", saved if "config" in saved else None, identity)
    logger.warning("%s already holds this finished run (step %s); nothing to do", out, saved.get("global_step"))
    return {**saved, "already_finished": True}


def _resume_point(out: Path, identity: dict[str, Any], resume: str | bool | None) -> Path | None:
    """The checkpoint to continue from: the one given, else the latest complete one of this run, else None."""
    if isinstance(resume, str):
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise PrefdataError(f"checkpoint {path} does not exist; pass a checkpoint-N folder or --resume latest")
        if is_unfinished(path):
            raise PrefdataError(f"{path} is not a complete checkpoint (its save did not finish); pass another one")
        marker = read_marker(path)
        if marker is None:  # written by an earlier version or another trainer: the user vouches for it
            logger.warning("%s has no prefdata marker; resuming from it as given", path)
        elif marker["fingerprint"] != identity["fingerprint"]:
            raise refuse_other_run(path, "a checkpoint", marker, identity)
        remove_incomplete(out)
        return path
    remove_incomplete(out)
    found = checkpoints(out)
    for _, _path, marker in found:
        if (marker or {}).get("fingerprint") != identity["fingerprint"]:
            raise refuse_other_run(out, "checkpoints", marker, identity)
    if found:
        logger.warning("resuming from %s", found[-1][1])
        return found[-1][1]
    if resume:
        raise PrefdataError(
            f"--resume latest: {out} holds no complete checkpoint; run the same command without --resume to "
            "start at step 0 (a rerun resumes by itself)"
        )
    return None


def to_dtype_safetensors(folder: Path, dtype: str) -> None:
    """Rewrite the saved weights in `dtype` (`--save-dtype`; a model trained in bf16 weights is saved as asked too)."""
    import torch
    from safetensors.torch import load_file, save_file

    want = getattr(torch, dtype)
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        saved = load_file(f)
        tensors = {k: (v.to(want) if v.is_floating_point() else v) for k, v in saved.items()}
        total += sum(v.numel() * v.element_size() for v in tensors.values())
        if all(v.dtype == saved[k].dtype for k, v in tensors.items()):
            continue  # already in that dtype (the float32 master weights, saved as they are)
        save_file(tensors, f, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2))
    cfg = folder / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        data["dtype"] = dtype
        data.pop("torch_dtype", None)
        cfg.write_text(json.dumps(data, indent=2))
