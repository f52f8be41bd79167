"""`AIPOTrainer`: preference optimization on `transformers.Trainer` with precomputed reference log-probs.

Gradient accumulation, bf16, gradient checkpointing, checkpoint/resume, `report_to` logging and multi-GPU /
multi-node (accelerate: DDP, FSDP, DeepSpeed) all come from `transformers.Trainer`. For more than one GPU:

    accelerate launch --num_processes 8 -m prefdata.cli train DATA --model M --output-dir OUT

The reference model never stays in memory: its log-probs are computed in one no-grad pass before training
(by the starting policy itself when it is the reference) and stored as dataset columns.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedModel, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from prefdata.train.config import AIPOConfig
from prefdata.train.data import (
    PairCollator,
    check_same_tokenizer,
    compute_logps,
    data_fingerprint,
    model_fingerprint,
    sequence_logps,
    stop_token_ids,
    tokenize_pairs,
)
from prefdata.train.distributed import has_weights, shared_logps
from prefdata.train.lora import add_adapters, cache_tag, is_peft, load_plain, load_policy, reference_mode, weight_dtype
from prefdata.train.losses import REFERENCE_FREE, preference_loss, preference_metrics
from prefdata.train.resume import start_save, write_marker

logger = logging.getLogger(__name__)


class AIPOTrainer(Trainer):
    """Trainer for the losses of `prefdata.train.losses` (AIPO by default).

    Args:
        model: a causal LM or the folder to load it from (in `args.dtype`: float32 for a full fine-tune, a bf16 base
            with LoRA adapters when `args.lora_r` > 0; bf16 autocast follows `args.bf16`).
        args: the `AIPOConfig`.
        train_dataset, eval_dataset: pairs with `prompt`/`chosen`/`rejected` message lists, or already tokenized
            (`prompt_ids`/`chosen_ids`/`rejected_ids`); reference columns are added if absent.
        processing_class: the tokenizer (default: loaded from the model folder).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: AIPOConfig,
        train_dataset: Dataset,
        eval_dataset: Dataset | None = None,
        processing_class: Any = None,
        callbacks: list | None = None,
        run_identity: dict[str, Any] | None = None,
    ) -> None:
        model_path = model if isinstance(model, str) else str(model.name_or_path)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model_path)
        if args.loss_type not in REFERENCE_FREE:
            for ref in args.ref_models:  # before any model is loaded: a mismatch fails fast
                check_same_tokenizer(processing_class, model_path, ref)
        if isinstance(model, str):
            model = load_policy(model, args)
        elif args.lora_r > 0 and not is_peft(model):  # a model object: add the adapters here, never train it all
            model = add_adapters(model, args)
        pad = processing_class.pad_token_id if processing_class.pad_token_id is not None else processing_class.eos_token_id
        collator = PairCollator(pad)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.policy_path = model_path
        self.run_identity = run_identity or {"fingerprint": None, "config": {}}
        self.ref_cache_paths: list[str] = []
        self.ref_pairs_computed = 0  # pairs this process ran through a reference model (not cache hits)
        train_dataset = self._prepare(train_dataset, model, processing_class, collator, args)
        if eval_dataset is not None:
            eval_dataset = self._prepare(eval_dataset, model, processing_class, collator, args)
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        # The loss is a mean over pairs: let Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    def _prepare(self, ds: Dataset, model: PreTrainedModel, tokenizer: Any, collator: PairCollator, args: AIPOConfig) -> Dataset:
        if "prompt_ids" not in ds.column_names:
            ds = tokenize_pairs(ds, tokenizer, args.max_prompt_length, args.max_length, stop_token_ids(model))
        if "ref_chosen_logps" in ds.column_names:
            return ds
        if args.loss_type in REFERENCE_FREE:  # SimPO never reads a reference: no pass, no cache file
            zeros = [[0.0]] * len(ds)
            return ds.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)
        refs = (
            ([self.policy_path] + list(args.ref_models)) if args.loss_type == "mrpo" else (args.ref_models or [self.policy_path])
        )
        cache_dir = Path(args.ref_cache_dir) if args.ref_cache_dir else None
        _ = args.device  # sets up the process group under `accelerate launch` / torchrun, before the collective pass
        data_key = data_fingerprint(ds)
        autocast = torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else None)
        chunk = args.logps_chunk_tokens
        chosen, rejected = [], []
        for ref in refs:
            key = f"{model_fingerprint(ref)[:16]}-{data_key[:16]}-{str(autocast).removeprefix('torch.')}{cache_tag(args)}"

            def compute(rows: list[int], ref: str = ref) -> tuple[np.ndarray, np.ndarray]:
                part = ds if len(rows) == len(ds) else ds.select(rows)
                self.ref_pairs_computed += len(part)
                logger.info("computing reference log-probs of %d pairs with %s", len(part), ref)
                if ref == self.policy_path:  # the policy itself, LoRA adapters disabled
                    with reference_mode(_on_device(model, args)) as ref_net:
                        return compute_logps(ref_net, part, collator, args.ref_batch_size, autocast, chunk)
                ref_model = load_plain(ref, weight_dtype(args)).to(args.device)
                try:
                    return compute_logps(ref_model, part, collator, args.ref_batch_size, autocast, chunk)
                finally:
                    del ref_model

            # under several processes each scores its share of the pairs (see prefdata.train.distributed)
            able = has_weights(model) if ref == self.policy_path else True
            c, r = shared_logps(cache_dir, key, len(ds), compute, can_compute=able)
            if cache_dir is not None:
                self.ref_cache_paths.append(str(cache_dir / f"{key}.npz"))
            chosen.append(c)
            rejected.append(r)
        ds = ds.add_column("ref_chosen_logps", np.stack(chosen, 1).tolist())
        return ds.add_column("ref_rejected_logps", np.stack(rejected, 1).tolist())

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Save, mark the checkpoint complete, and only then delete old ones (a kill never loses the last one)."""
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            start_save(checkpoint)
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            write_marker(checkpoint, self.run_identity)
            rotate_checkpoints(str(run_dir), limit, self.state.best_model_checkpoint, use_mtime=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        args: AIPOConfig = self.args  # type: ignore[assignment]
        logps, lengths = sequence_logps(model, inputs, args.logps_chunk_tokens)
        pc, pr = logps.chunk(2)
        lc, lr = lengths.chunk(2)
        ref_c = inputs["ref_chosen_logps"].to(pc.dtype).T  # [K, B]
        ref_r = inputs["ref_rejected_logps"].to(pc.dtype).T
        if args.loss_type == "mrpo":
            losses = preference_loss("mrpo", pc, pr, ref_c, ref_r, lc, lr, **args.loss_kwargs())
        else:
            losses = preference_loss(args.loss_type, pc, pr, ref_c[0], ref_r[0], lc, lr, **args.loss_kwargs())
        metrics = preference_metrics(pc, pr, ref_c[0], ref_r[0], lc, lr, beta=args.beta)
        for key, value in metrics.items():
            self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value).float().mean().item())
        loss = losses.mean()
        return (loss, {"logps": logps.detach()}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Eval batches have no labels: always compute the preference loss."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()


def _on_device(model: Any, args: AIPOConfig) -> Any:
    """Move the model to the training device (a 4-bit model is already placed by its device_map)."""
    return model if getattr(model, "is_loaded_in_4bit", False) else model.to(args.device)
