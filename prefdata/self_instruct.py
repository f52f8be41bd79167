"""Self-instruct (the AIPO pipeline's first stage): the current model writes new prompts from seed examples.

Each request shows 8 instructions drawn from a prompt pool as a numbered list ("Come up with a series of
tasks: 1. ... 8. ... 9.") and lets the model continue; items 9 and 10 are new instructions. Then the
pipeline's filters run: an item cut by max_tokens, length bounds, duplicates (of each other and of the pool), banned keywords,
prompts that ask for images or files, leading punctuation or non-ASCII, and template leftovers.

Reads:  a prompt pool (any file `prefdata.run.prompts` reads; the last user turn of each prompt is used).
Writes: a jsonl file with one `{"prompt": ...}` per new instruction, written atomically once complete.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.llm.context import text_tokens
from prefdata.run.prompts import load_prompts
from prefdata.run.store import atomic_write_bytes

BANNED = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot", "go to")
DROP_PREFIXES = ("write a program",)
DROP_CONTAINS = ("detailed instructions:", "task definition:")
CUT_MARKERS = ("answer:", "output:", "solution:", "a:")


@dataclass
class SelfInstructConfig:
    """Defaults follow the AIPO pipeline's self-instruct stage (papers.md 1.6)."""

    pool: str | None = None
    """Prompt pool for seed examples (default: the bundled MT-Bench questions)."""
    num_prompts: int = 64
    """New instructions to keep."""
    seeds_per_request: int = 8
    new_per_request: int = 2
    temperature: float = 0.5
    top_p: float = 0.9
    max_tokens: int = 256
    min_tokens: int = 4
    max_prompt_tokens: int = 512
    banned_keywords: list[str] = field(default_factory=lambda: list(BANNED))
    seed: int = 0
    max_requests: int = 0
    """Stop after this many requests even if fewer prompts passed the filters (0: 20 x num_prompts)."""


def _one_line(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def build_request(seeds: list[str]) -> str:
    lines = ["Come up with a series of tasks:", ""]
    lines += [f"{i}. {_one_line(s)}" for i, s in enumerate(seeds, 1)]
    lines.append(f"{len(seeds) + 1}.")
    return "\n".join(lines)


def parse_response(text: str, first_number: int) -> list[str]:
    """The continuation starts right after "N."; later items are "N+1. ..." lines."""
    parts = re.split(r"\n\s*\d+\s*\.\s*", "\n" + str(first_number) + ". " + text.strip())
    return [p.strip() for p in parts if p.strip()]


def filter_instruction(inst: str, n_tokens: int, cfg: SelfInstructConfig) -> tuple[str | None, str]:
    """Returns (kept instruction or None, reason)."""
    low = inst.lower()
    if "example:" not in low:
        for m in CUT_MARKERS:
            idx = low.find(m)
            if idx > 0:
                inst = inst[:idx].strip()
                low = inst.lower()
    if not inst:
        return None, "empty"
    if n_tokens < cfg.min_tokens or n_tokens > cfg.max_prompt_tokens:
        return None, "length"
    words = set(re.findall(r"[a-z]+", low))
    for kw in cfg.banned_keywords:
        if (" " in kw and kw in low) or kw in words:
            return None, "banned_keyword"
    if low.startswith(DROP_PREFIXES) or any(s in low for s in DROP_CONTAINS):
        return None, "template"
    if not inst[0].isascii() or not (inst[0].isalnum() or inst[0] in "\"'("):
        return None, "leading_char"
    return inst, "kept"


def run_self_instruct(llm: Any, cfg: SelfInstructConfig, out_file: Path) -> dict[str, Any]:
    """Write `cfg.num_prompts` new prompts to `out_file` (skipped when it already exists: resume)."""
    if out_file.is_file():
        n = sum(1 for _ in out_file.open())
        return {"prompts": n, "resumed": True}
    from vllm import SamplingParams

    from prefdata.llm.vllm_engine import lora_request

    pool = [m.to_list()[-1]["content"] for m in load_prompts(cfg.pool).table["messages"]]
    if len(pool) < cfg.seeds_per_request:
        raise PrefdataError(f"self-instruct needs at least {cfg.seeds_per_request} prompts in the pool, got {len(pool)}")
    rng = random.Random(cfg.seed)
    tok = llm.get_tokenizer()
    seen = {re.sub(r"\W+", " ", p.lower()).strip() for p in pool}
    kept: list[str] = []
    reasons: dict[str, int] = {}
    n_first = cfg.seeds_per_request + 1
    stop = ["\n\n", f"\n{n_first + cfg.new_per_request}", f"{n_first + cfg.new_per_request}.", f"{n_first + cfg.new_per_request} ."]
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, stop=stop)
    max_requests = cfg.max_requests or 20 * cfg.num_prompts
    sent = 0
    while len(kept) < cfg.num_prompts and sent < max_requests:
        k = min(max(8, cfg.num_prompts - len(kept)), max_requests - sent)
        reqs = [build_request(rng.sample(pool, cfg.seeds_per_request)) for _ in range(k)]
        outs = llm.generate(reqs, params, use_tqdm=False, lora_request=lora_request(llm))
        sent += k
        for o in outs:
            items = parse_response(o.outputs[0].text, n_first)
            if o.outputs[0].finish_reason == "length" and items:
                items.pop()  # the item being written when max_tokens hit is incomplete
                reasons["truncated"] = reasons.get("truncated", 0) + 1
            for inst in items[: cfg.new_per_request]:
                key = re.sub(r"\W+", " ", inst.lower()).strip()
                if key in seen:
                    reasons["duplicate"] = reasons.get("duplicate", 0) + 1
                    continue
                n_tok = text_tokens(tok, inst)
                got, why = filter_instruction(inst, n_tok, cfg)
                reasons[why] = reasons.get(why, 0) + 1
                if got is not None and len(kept) < cfg.num_prompts:
                    seen.add(key)
                    kept.append(got)
    if not kept:
        raise PrefdataError(f"self-instruct kept no prompts after {sent} requests (filters: {reasons}); check the model and pool")
    atomic_write_bytes(out_file, ("\n".join(json.dumps({"prompt": p}, ensure_ascii=False) for p in kept) + "\n").encode())
    return {"prompts": len(kept), "requests": sent, "filtered": reasons, "resumed": False}
