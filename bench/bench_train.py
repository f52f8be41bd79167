"""Training throughput and peak memory: prefdata's AIPOTrainer vs TRL's DPOTrainer, same model, data and settings.

Each trainer runs in its own subprocess, so the peak resident memory (VmHWM from /proc/self/status) is its own.
Data: the first N pairs of hh-rlhf helpful (test split), with the shared "\n\nHuman: ... \n\nAssistant:" prefix
turned into chat messages, kept when prompt + each response fit in max_length (so nothing is truncated).

    python bench/bench_train.py --pairs 32 --batch-size 4 --max-length 512            # the demo model
    python bench/bench_train.py --tiny-layers 4 --pairs 64 --batch-size 8     # a 4-layer random Llama, demo tokenizer
    python bench/bench_train.py --pairs 8 --batch-size 2 --max-length 256 --runs prefdata,prefdata-lora,trl-lora

Both trainers: sigmoid DPO (prefdata `--loss dpo`; AIPO adds two cheap terms), β 0.1, float32 weights on CPU, no
gradient checkpointing, float32 compute, one epoch; `--defaults` instead takes each tool's defaults (gradient
checkpointing, bf16 autocast where the CPU computes bf16; `--no-bf16` keeps float32 compute). tokens/s counts prompt+chosen and prompt+rejected tokens without padding.
LoRA runs (`prefdata-lora`, `trl-lora`): r = --lora-r, alpha 2r, dropout 0.05, every linear layer of the decoder,
the same float32 base unless --lora-base-bf16 (prefdata's default for LoRA).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH = REPO / "tests" / "data" / "hh_rlhf_helpful_test_300.jsonl"


def hh_to_messages(text: str) -> list[dict[str, str]]:
    msgs = []
    for chunk in text.split("\n\nHuman: ")[1:]:
        user, _, assistant = chunk.partition("\n\nAssistant: ")
        msgs.append({"role": "user", "content": user.strip()})
        if assistant:
            msgs.append({"role": "assistant", "content": assistant.strip()})
    return msgs


def hh_pairs(path: Path) -> list[dict]:
    """Split each transcript pair at their last shared '\\n\\nAssistant:' into prompt messages + two answers."""
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        c, rj = r["chosen"], r["rejected"]
        n = len(os.path.commonprefix([c, rj]))
        cut = c.rfind("\n\nAssistant:", 0, n + 1)
        if cut < 0:
            continue
        head = "\n\nAssistant:"
        chosen, rejected = c[cut + len(head) :].strip(), rj[cut + len(head) :].strip()
        prompt = hh_to_messages(c[:cut])
        if not chosen or not rejected or chosen == rejected or not prompt or prompt[-1]["role"] != "user":
            continue
        out.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return out


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vm_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = json.loads(Path(a.data).read_text())
    tok = AutoTokenizer.from_pretrained(a.model)
    if a.which.startswith("trl"):
        import trl  # noqa: F401  (imported before the baseline so its import cost is not counted as training memory)
    else:
        import prefdata.train.trainer  # noqa: F401
    lora = a.lora_r if a.which.endswith("-lora") else 0
    weights = torch.bfloat16 if (lora and (a.lora_base_bf16 or (a.defaults and a.which == "prefdata-lora"))) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=weights)
    base = vm_rss_mib()
    common = {
        "output_dir": a.out,
        "per_device_train_batch_size": a.batch_size,
        "num_train_epochs": 1,
        "learning_rate": 1e-6,
        "warmup_steps": 0,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        "bf16": False,
        "dataloader_pin_memory": False,
        "seed": 0,
    }
    if a.defaults:  # each tool's own defaults: gradient checkpointing on (both), bf16 autocast (TRL: on; prefdata: where
        del common["gradient_checkpointing"], common["bf16"]  # the hardware computes bf16, this CPU included)
        if a.no_bf16:
            common["bf16"] = False
        if a.which.startswith("trl") and not torch.cuda.is_available():
            common["use_cpu"] = True  # TRL's bf16 default needs it on CPU (transformers refuses bf16 otherwise)
    ds = Dataset.from_list(rows)
    t0 = time.perf_counter()
    if a.which.startswith("trl"):
        from trl import DPOConfig, DPOTrainer

        cfg = DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], max_length=a.max_length,
                        precompute_ref_log_probs=a.trl_precompute)  # fmt: skip
        peft_config = None
        if lora:
            from peft import LoraConfig

            peft_config = LoraConfig(r=lora, lora_alpha=2 * lora, lora_dropout=0.05, target_modules="all-linear",
                                     bias="none", task_type="CAUSAL_LM")  # fmt: skip
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    else:
        from prefdata.train.config import AIPOConfig
        from prefdata.train.trainer import AIPOTrainer

        cfg = AIPOConfig(**common, loss_type=a.loss, beta=0.1, max_length=a.max_length, max_prompt_length=a.max_length - 1,
                         ref_batch_size=a.batch_size, lora_r=lora, lora_dropout=0.05)  # fmt: skip
        trainer = AIPOTrainer(model, cfg, ds, processing_class=tok)
    t1 = time.perf_counter()
    res = trainer.train()
    t2 = time.perf_counter()
    tds = trainer.train_dataset
    tokens = sum(
        2 * len(p) + len(c) + len(r) for p, c, r in zip(tds["prompt_ids"], tds["chosen_ids"], tds["rejected_ids"], strict=True)
    )
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "trainer": a.which + ("-precompute" if a.trl_precompute else ""),
        "lora_r": lora,
        "defaults": a.defaults,
        "bf16_autocast": bool(trainer.args.bf16),
        "grad_ckpt": bool(trainer.args.gradient_checkpointing),
        "weights": str(weights).removeprefix("torch."),
        "loss_type": a.loss if a.which.startswith("prefdata") else "sigmoid",
        "pairs": len(tds),
        "steps": trainer.state.global_step,
        "tokens": tokens,
        "init_s": round(t1 - t0, 2),
        "train_s": round(t2 - t1, 2),
        "train_tok_per_s": round(tokens / (t2 - t1), 1),
        "end_to_end_tok_per_s": round(tokens / (t2 - t0), 1),
        "peak_rss_mib": round(vm_hwm_mib(), 1),
        "rss_after_load_mib": round(base, 1),
        "peak_over_load_mib": round(vm_hwm_mib() - base, 1),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "train_loss": res.training_loss,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--tiny-layers", type=int, default=0, help="build a tiny random Llama with this many layers instead")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--loss", default="dpo")
    ap.add_argument("--worker", dest="which", default=None)
    ap.add_argument("--trl-precompute", action="store_true")
    ap.add_argument("--runs", default="prefdata,trl,trl-precompute",
                    help="comma-separated: prefdata, prefdata-lora, trl, trl-precompute, trl-lora")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-base-bf16", action="store_true", help="LoRA runs load the frozen base in bf16")
    ap.add_argument("--defaults", action="store_true",
                    help="each tool's defaults (gradient checkpointing, bf16 autocast, prefdata's bf16 LoRA base)")
    ap.add_argument("--no-bf16", action="store_true", help="with --defaults: keep float32 compute (no bf16 autocast)")
    ap.add_argument("--data")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.which:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return

    import tempfile

    from transformers import AutoTokenizer

    from prefdata.models import resolve_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = resolve_model(a.model)
    if a.tiny_layers:
        sys.path.insert(0, str(REPO))
        from tests.helpers import build_tiny_llama

        model = str(build_tiny_llama(tmp / "tiny", Path(model), seed=0, layers=a.tiny_layers))
    tok = AutoTokenizer.from_pretrained(model)
    rows = []
    for r in hh_pairs(HH):
        p = len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True))
        longest = max(len(tok(x[0]["content"])["input_ids"]) for x in (r["chosen"], r["rejected"]))
        if p + longest + 4 <= a.max_length:
            rows.append(r)
        if len(rows) == a.pairs:
            break
    data = tmp / "pairs.json"
    data.write_text(json.dumps(rows))
    known = {"prefdata": ("prefdata", []), "prefdata-lora": ("prefdata-lora", []), "trl": ("trl", []),
             "trl-precompute": ("trl", ["--trl-precompute"]), "trl-lora": ("trl-lora", [])}  # fmt: skip
    runs = [known[name] for name in a.runs.split(",")]
    extra_all = ["--lora-r", str(a.lora_r)] + (["--lora-base-bf16"] if a.lora_base_bf16 else [])
    extra_all += ["--defaults"] if a.defaults else []
    extra_all += ["--no-bf16"] if a.no_bf16 else []
    print(f"model {model}; {len(rows)} pairs; batch {a.batch_size}; max_length {a.max_length}; threads {a.threads}")
    for rep in range(a.repeats):
        for which, extra in runs:
            cmd = [sys.executable, __file__, "--worker", which, "--model", model, "--data", str(data), "--out",
                   str(tmp / f"out-{which}"), "--batch-size", str(a.batch_size), "--max-length", str(a.max_length),
                   "--threads", str(a.threads), "--loss", a.loss, *extra, *extra_all]  # fmt: skip
            env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(a.threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not result:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{which} failed")
            print(f"[{rep}] " + result[0][7:], flush=True)


if __name__ == "__main__":
    main()
