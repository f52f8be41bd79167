"""The LM head under bf16 autocast: error of per-sequence log-probs against float64, and speed, old head vs new.

old: the chunked head as it was (issue 19 item 6): `linear` under autocast gives bf16 logits, cast to float32
     before the log-softmax, so every logit is rounded to bf16 first; with grad, activation-checkpointed.
new: `prefdata.train.data._head_chunk` today: the head's matmul in float32 (autocast off for it); with grad,
     `_HeadLogps` recomputes the gradient in the autocast dtype.

Everything else is prefdata's own `sequence_logps` (chunked head, default 1024 tokens a chunk) under bf16 autocast
with float32 master weights, as the trainer runs where the hardware computes bf16.

Errors (nats per sequence, summed over the completion tokens), against a float64 forward of the same model:
- full: the whole forward under autocast (the decoder's bf16 error included);
- head only: the float64 model's last hidden states, cast to float32, through each head under autocast, so the
  difference between the rows is the head's alone.
Speed: a training step (forward + backward of the summed log-probs) and a no-grad log-prob pass, old and new
alternated, median of --reps each; the ratio new/old is taken within this one run. Timed as the process's CPU
time on one torch thread (--threads 1) by default: on a machine shared with other work, wall time swung by 2x
between repetitions, CPU time far less. A head-only row (the chunk function on 256 tokens, forward + backward)
shows the head's own cost.

    python bench/bench_lm_head.py                     # the demo model, 2 hh-rlhf pairs in one batch
    python bench/bench_lm_head.py --model PATH --pairs 16 --reps 7
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_train import HH, hh_pairs  # noqa: E402
from prefdata.llm import hardware  # noqa: E402
from prefdata.train import data as D  # noqa: E402


def old_token_logps(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    multiplier: float, divisor: float, softcap: float | None) -> torch.Tensor:
    """The head before the fix, verbatim: logits in the autocast dtype, then float32."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    if multiplier != 1.0:
        logits = logits * multiplier
    if divisor != 1.0:
        logits = logits / divisor
    logits = logits.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def old_head_chunk(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   multiplier: float, divisor: float, softcap: float | None) -> torch.Tensor:
    """The chunk as `sequence_logps` ran it before the fix: checkpointed with grad."""
    args = (hidden, targets, weight, bias, multiplier, divisor, softcap)
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(old_token_logps, *args, use_reentrant=False)
    return old_token_logps(*args)


HEADS = {"old": old_head_chunk, "new": D._head_chunk}


def use_head(name: str) -> None:
    D._head_chunk = HEADS[name]


def autocast() -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def hidden64(model64: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 last hidden states at the completion positions, and their targets."""
    mask = batch["completion_mask"]
    c = mask.shape[1]
    out = model64.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0), use_cache=False)
    sel = mask.bool()
    return out.last_hidden_state[:, -c - 1 : -1][sel], batch["input_ids"][:, -c:][sel]


def per_sequence(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask.bool()]
    return torch.zeros(mask.shape[0], dtype=torch.float64).index_add(0, rows, per_token.double())


def errors(model: Any, model64: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, list[float]]:
    """|logp - float64 logp| per sequence, for each head, full forward and head only."""
    w32, w64 = model.get_output_embeddings().weight, model64.get_output_embeddings().weight
    err: dict[str, list[float]] = {f"{k} {h}": [] for k in ("full", "head only") for h in HEADS}
    err["full float32 (no autocast)"] = []
    with torch.no_grad():
        for b in batches:
            h64, t = hidden64(model64, b)
            logits64 = h64 @ w64.T
            ref = per_sequence(logits64.gather(-1, t.unsqueeze(-1)).squeeze(-1) - logits64.logsumexp(-1), b["completion_mask"])
            for name, fn in HEADS.items():
                use_head(name)
                with autocast():
                    full, _ = D.sequence_logps(model, b)
                    head = fn(h64.float(), t, w32, None, 1.0, 1.0, None)
                err[f"full {name}"] += (full.double() - ref).abs().tolist()
                err[f"head only {name}"] += (per_sequence(head, b["completion_mask"]) - ref).abs().tolist()
            use_head("new")
            plain, _ = D.sequence_logps(model, b)
            err["full float32 (no autocast)"] += (plain.double() - ref).abs().tolist()
    return err


def timed(fn: Any) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def speed(model: Any, batches: list[dict[str, torch.Tensor]], reps: int) -> dict[str, list[float]]:
    """Seconds per pass over all batches: a training step (forward + backward) and a no-grad pass, heads alternated."""

    def train_step() -> None:
        for b in batches:
            model.zero_grad(set_to_none=True)
            with autocast():
                logps, _ = D.sequence_logps(model, b)
            logps.sum().backward()

    def logp_pass() -> None:
        with torch.no_grad(), autocast():
            for b in batches:
                D.sequence_logps(model, b)

    head = model.get_output_embeddings().weight
    hidden = torch.randn(256, head.shape[1]) * 0.5
    targets = torch.randint(0, head.shape[0], (256,))

    def head_only(fn: Any) -> None:
        x = hidden.clone().requires_grad_(True)
        with autocast():
            fn(x, targets, head, None, 1.0, 1.0, None).sum().backward()

    out: dict[str, list[float]] = {f"{k} {h}": [] for k in ("train step", "log-prob pass", "head only, 256 tokens")
                                   for h in HEADS}
    use_head("new")
    train_step()  # warm-up: oneDNN primitives, allocator
    for r in range(reps):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for name in order:
            use_head(name)
            out[f"train step {name}"].append(timed(train_step))
            out[f"log-prob pass {name}"].append(timed(logp_pass))
            out[f"head only, 256 tokens {name}"].append(timed(lambda n=name: head_only(HEADS[n])))
    use_head("new")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a causal LM folder (default: the demo model)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--batch-pairs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefdata.models import demo_model_dir

    path = a.model or str(demo_model_dir())
    tok = AutoTokenizer.from_pretrained(path)
    rows = [D.tokenize_pair(p, tok, a.max_length // 2, a.max_length) for p in hh_pairs(HH)[: a.pairs]]
    collate = D.PairCollator(tok.pad_token_id)
    batches = [collate(rows[i : i + a.batch_pairs]) for i in range(0, len(rows), a.batch_pairs)]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model64 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
    comp = sum(int(b["completion_mask"].sum()) for b in batches)
    total = sum(int(b["attention_mask"].sum()) for b in batches)
    flags = sorted(hardware.cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    print(f"CPU: {hardware.cpu_model()} ({', '.join(flags)}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{platform.python_version()}")
    print(f"model: {path}; {len(rows)} pairs in {len(batches)} batches, {total} tokens ({comp} completion tokens)")

    t0 = time.perf_counter()
    err = errors(model, model64, batches)
    print(f"(errors measured in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print("\n| log-probs vs float64 (nats per sequence) | mean abs error | max abs error |\n|---|---|---|")
    for k, v in err.items():
        print(f"| {k} | {statistics.mean(v):.2e} | {max(v):.2e} |")
    del model64

    t0 = time.perf_counter()
    sp = speed(model, batches, a.reps)
    print(f"(speed measured in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(f"\n| CPU seconds, median of {a.reps} | old head | new head | new / old |\n|---|---|---|---|")
    for k in ("train step", "log-prob pass", "head only, 256 tokens"):
        old, new = statistics.median(sp[f"{k} old"]), statistics.median(sp[f"{k} new"])
        ratios = [n / o for o, n in zip(sp[f"{k} old"], sp[f"{k} new"], strict=True)]
        print(f"| {k} | {old:.3f} | {new:.3f} | {new / old:.3f} (per-rep ratios {', '.join(f'{r:.2f}' for r in ratios)}) |")


if __name__ == "__main__":
    main()
