"""Run by tests/test_ddp.py, alone or under `accelerate launch --num_processes 2 --cpu`: train, then write what
this process did (its no-grad forward passes, the logged losses) to OUT/rank-<r>.json.

Usage: python tests/ddp_train.py DATA MODEL OUT PER_DEVICE_BATCH CACHE_DIR [LORA_R]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> None:
    data, model, out, batch, cache = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    lora_r = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    ref_rows = [0]

    from transformers import PreTrainedModel

    def count(module, args, kwargs, output):  # every reference forward runs without grad; training ones with it
        # the transformers model itself (a peft wrapper is not a PreTrainedModel and would count the pass twice)
        if isinstance(module, PreTrainedModel) and type(module).__name__.endswith("ForCausalLM") and not torch.is_grad_enabled():
            ref_rows[0] += kwargs["input_ids"].shape[0] // 2  # a batch holds each pair twice (chosen, rejected)

    torch.nn.modules.module.register_module_forward_hook(count, with_kwargs=True)
    from prefdata.train import train
    from prefdata.train.distributed import rank_and_world

    s = train(data, model, out / "model", loss_type="aipo", max_steps=2, per_device_train_batch_size=batch,
              learning_rate=1e-3, warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], bf16=False,
              disable_tqdm=True, dataloader_pin_memory=False, seed=0, ref_cache_dir=cache, lora_r=lora_r, lora_dropout=0.0)  # fmt: skip
    rank, world = rank_and_world()
    (out / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "ref_rows_forwarded": ref_rows[0], "ref_pairs_computed": s["ref_pairs_computed"],
        "first_loss": s["first_logged"].get("loss"), "last_loss": s["last_logged"].get("loss"),
        "train_loss": s["train_loss"], "global_step": s["global_step"],
    }))


if __name__ == "__main__":
    main()
