"""Resume by rerunning: which checkpoints are complete, and whether an output folder holds this same run.

A checkpoint counts only once the trainer has written everything into it and then a marker file
(`prefdata_checkpoint.json`, written atomically last). A kill -9 during a save leaves a folder without the marker;
such folders are removed before training starts, so `--resume latest` never picks one.

The marker and the final summary carry the run's identity: a hash of every setting that changes the trained
weights, the content of the policy and reference models, and the pairs. A rerun with the same identity resumes
(or, when finished, just reports); a different one is refused rather than silently mixed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.run.records import TRAIN_SUMMARY, stable_hash

logger = logging.getLogger(__name__)

MARKER = "prefdata_checkpoint.json"
SAVING = ".prefdata-saving"  # created before a save starts, removed after the marker: "a save of ours was cut"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Settings that do not change the trained weights: logging, saving, paths, evaluation and memory knobs.
_NOT_RESULTS = {
    "output_dir", "logging_dir", "overwrite_output_dir", "overwrite", "disable_tqdm", "report_to", "run_name", "project",
    "push_to_hub", "resume_from_checkpoint", "local_rank", "ref_batch_size", "ref_cache_dir", "logps_chunk_tokens",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "skip_memory_metrics", "debug", "do_train",
    "do_eval", "do_predict", "ddp_timeout", "per_device_eval_batch_size", "prediction_loss_only",
    "include_num_input_tokens_seen", "enable_jit_checkpoint", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "torch_empty_cache_steps",
}  # fmt: skip
_NOT_RESULT_PREFIXES = ("logging_", "log_", "save_", "hub_", "eval_", "trackio_", "batch_eval", "include_for")


def config_view(cfg: Any) -> dict[str, Any]:
    """The settings of an `AIPOConfig` that change the trained weights, JSON-ready (reference paths excluded)."""
    out = {}
    for k, v in cfg.to_dict().items():
        if k in _NOT_RESULTS or k.startswith(_NOT_RESULT_PREFIXES) or k == "ref_models":
            continue
        out[k] = v
    return json.loads(json.dumps(out, default=str))


def run_identity(cfg: Any, model_path: str, train_rows: list[dict], eval_rows: list[dict] | None) -> dict[str, Any]:
    """What makes two trainings the same run: settings, model contents (policy, references) and the pairs."""
    from prefdata.fingerprint import model_hash

    view = config_view(cfg)
    view["model"] = model_hash(model_path)[:16]
    view["ref_models"] = [model_hash(r)[:16] for r in cfg.ref_models]
    view["data"] = stable_hash({"train": train_rows, "eval": eval_rows or []})
    return {"fingerprint": stable_hash(view), "config": view}


def start_save(checkpoint: Path) -> None:
    """Flag `checkpoint` as being written (before any file): a kill leaves the flag and no marker."""
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / SAVING).touch()


def write_marker(checkpoint: Path, identity: dict[str, Any]) -> None:
    """Mark `checkpoint` complete (atomically: a kill leaves either no marker or a whole one), then drop the flag."""
    tmp = checkpoint / f".{MARKER}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(identity, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, checkpoint / MARKER)
    (checkpoint / SAVING).unlink(missing_ok=True)


def read_marker(checkpoint: Path) -> dict[str, Any] | None:
    """The marker of a complete checkpoint, or None when the save did not finish."""
    try:
        marker = json.loads((checkpoint / MARKER).read_text())
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "fingerprint" in marker else None


def is_unfinished(checkpoint: Path) -> bool:
    """A save that did not finish: ours (flag, no marker) or any without a readable trainer_state.json.

    A folder with a trainer state but neither flag nor marker (an earlier prefdata version, another trainer) is
    not unfinished: it is kept, and refused as a run of unknown settings rather than deleted.
    """
    if read_marker(checkpoint) is not None:
        return False
    if (checkpoint / SAVING).exists():
        return True
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return True
    return False


def checkpoints(out: Path) -> list[tuple[int, Path, dict[str, Any] | None]]:
    """(step, folder, marker or None) of every checkpoint-N folder in `out`, by step."""
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p, read_marker(p)))
    return sorted(found, key=lambda t: t[0])


def remove_incomplete(out: Path) -> list[Path]:
    """Delete the checkpoint folders whose save was interrupted (see `is_unfinished`)."""
    removed = []
    for _, p, _ in checkpoints(out):
        if is_unfinished(p):
            logger.warning("removing %s: its save did not finish (the process was killed while writing it)", p)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def state_of(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """'learning_rate 0.001 -> 0.002, data' : the first few settings that differ between two identities."""
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        if old.get(k) != new.get(k):
            diffs.append(k if k in ("data", "model", "ref_models") else f"{k} {old.get(k)!r} -> {new.get(k)!r}")
    return ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "") or "unknown"


def refuse_other_run(out: Path, what: str, old: dict[str, Any] | None, new: dict[str, Any]) -> PrefdataError:
    changed = describe_difference((old or {}).get("config", {}), new["config"]) if old else "unknown (no prefdata marker)"
    return PrefdataError(
        f"{out} holds {what} of a different training run (changed: {changed}); rerun with the same settings to "
        "resume, pass --overwrite to start over, or choose another --output-dir"
    )


def clear_run(out: Path) -> None:
    """`--overwrite`: remove the checkpoints and the summary a previous run left (nothing else in the folder)."""

    for _, p, _ in checkpoints(out):
        shutil.rmtree(p)
    (out / TRAIN_SUMMARY).unlink(missing_ok=True)
