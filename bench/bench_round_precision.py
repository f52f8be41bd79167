"""How much of a round's weight change survives the save the next round trains from (issue 19 §5).

Trains the demo model with prefdata's trainer (full fine-tune, float32 master weights) on arithmetic pairs, once
per learning rate, and saves the model as the loop does (`--save-dtype float32`, the default). Then:

- `after` is the trained float32 weights (the saved file, which is exactly the trainer's weights);
- the update is Δ = after − before (before: the starting model, float32 from its bf16 checkpoint);
- a save in dtype D keeps `round_D(after) − before`; its surviving fraction is the part of Δ it keeps,
  <kept, Δ> / <Δ, Δ>, and `changed` is the share of weights whose saved value differs from the start.

    .venv/bin/python bench/bench_round_precision.py --steps 10 --lrs 5e-7,2e-5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pairs(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 11 + (7 * i) % 80, 12 + (13 * i) % 70
        q = [{"role": "user", "content": f"What is {a} + {b}?"}]
        rows.append({"prompt": q, "chosen": [{"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is {a + b}."}],
                     "rejected": [{"role": "assistant", "content": f"{a} + {b} = {a + b + 3}. The answer is {a + b + 3}."}]})
    return rows


def surviving(before: dict, after: dict, dtype: object) -> tuple[float, float]:
    dot = norm = changed = total = 0.0
    for k, w0 in before.items():
        if not w0.is_floating_point():
            continue
        w1 = after[k].double()
        delta = w1 - w0.double()
        kept = w1.to(dtype).double() - w0.double()
        dot += float((kept * delta).sum())
        norm += float((delta * delta).sum())
        changed += float((kept != 0).sum())
        total += w0.numel()
    return dot / norm if norm else float("nan"), changed / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lrs", default="5e-7,2e-5")
    ap.add_argument("--pairs", type=int, default=80)
    a = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from prefdata.llm.hardware import cpu_flags, cpu_model
    from prefdata.models import demo_model_dir
    from prefdata.train import train

    torch.set_num_threads(2)
    start = demo_model_dir()
    before = {k: v.float() for k, v in load_file(start / "model.safetensors").items()}
    work = Path(tempfile.mkdtemp(prefix="bench-round-"))
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs(a.pairs)))
    print(f"CPU: {cpu_model()}; native bf16: {bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})}")
    print("| lr | steps | saved as | surviving fraction of the update | weights changed |")
    print("|---|---|---|---|---|")
    for lr in (float(x) for x in a.lrs.split(",")):
        out = work / f"lr{lr}"
        train(str(data), str(start), str(out), max_steps=a.steps, learning_rate=lr, per_device_train_batch_size=8,
              gradient_checkpointing=False, save_strategy="no", logging_steps=1, report_to=[], warmup_steps=0.1)
        after = load_file(out / "model.safetensors")
        assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point()), "float32 save expected"
        for name, dtype in (("bfloat16 (before)", torch.bfloat16), ("float32 (now)", torch.float32)):
            frac, changed = surviving(before, after, dtype)
            print(f"| {lr:g} | {a.steps} | {name} | {frac:.3f} | {changed:.3f} |", flush=True)


if __name__ == "__main__":
    main()
