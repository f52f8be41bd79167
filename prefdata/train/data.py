"""Preference data for training: reading, tokenization, batching, sequence log-probs, and the reference cache.

Layout of a batch (built by `PairCollator`): rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected. Prompts
are left-padded and completions right-padded, so every completion starts at the same column P. The model then
needs logits only for the last C+1 positions (`logits_to_keep`), which skips the prompt's share of the LM head.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from prefdata.errors import PrefdataError

REQUIRED = ("prompt", "chosen", "rejected")
REF_CACHE_FOLDER = ".prefdata_ref_cache"


# ---------------------------------------------------------------- reading


def load_pairs(path: str | Path) -> tuple[Dataset, Dataset | None]:
    """Read (train, eval or None) pairs from an export folder, a parquet/jsonl file or a saved `datasets` folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PrefdataError(f"dataset {p} does not exist; pass an export folder, a .parquet/.jsonl file or a saved dataset")
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            ds = load_from_disk(str(p))
            if isinstance(ds, DatasetDict):
                if "train" not in ds:
                    raise PrefdataError(f"saved dataset {p} has splits {list(ds)} but no 'train' split")
                train, evals = ds["train"], ds.get("test")
            else:
                train, evals = ds, None
        else:
            train, evals = _read_folder(p)
    elif p.suffix == ".parquet":
        train, evals = _read_files([str(p)]), None
    elif p.suffix in (".jsonl", ".json"):
        train, evals = _read_jsonl(p), None
    else:
        raise PrefdataError(f"dataset {p}: unsupported file type {p.suffix!r}; use .parquet, .jsonl or a folder")
    train = normalize_pairs(train, str(p))
    return train, normalize_pairs(evals, str(p)) if evals is not None and len(evals) else None


def _read_folder(p: Path) -> tuple[Dataset, Dataset | None]:
    """An export folder of either file format (data/train-*.parquet or .jsonl, test-* the eval split)."""
    data = p / "data" if (p / "data").is_dir() else p
    for ext in ("parquet", "jsonl"):
        test_files = sorted(glob.glob(str(data / f"test-*.{ext}")))
        train_files = sorted(glob.glob(str(data / f"train-*.{ext}")))
        if not train_files:
            train_files = sorted(set(glob.glob(str(data / f"*.{ext}"))) - set(test_files))
        if train_files:
            read = _read_files if ext == "parquet" else _read_jsonl_files
            return read(train_files), (read(test_files) if test_files else None)
    raise PrefdataError(
        f"dataset folder {p} has no data files (expected data/train-*.parquet or data/train-*.jsonl, or a saved dataset)"
    )


def _read_files(files: list[str]) -> Dataset:
    rows: list[dict[str, Any]] = []
    for f in files:
        try:
            rows.extend(pq.read_table(f, columns=None).select(_present(f)).to_pylist())
        except PrefdataError:
            raise
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise PrefdataError(f"cannot read parquet file {f}: {e}") from e
    return Dataset.from_list(rows)


def _present(f: str) -> list[str]:
    names = pq.read_schema(f).names
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise PrefdataError(f"{f} is missing column(s) {', '.join(missing)}; a preference dataset needs prompt, chosen, rejected")
    return list(REQUIRED)


def _read_jsonl_files(files: list[str]) -> Dataset:
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(_jsonl_rows(Path(f)))
    return Dataset.from_list(rows)


def _read_jsonl(p: Path) -> Dataset:
    return Dataset.from_list(_jsonl_rows(p))


def _jsonl_rows(p: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        text = p.read_text()
        if p.suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrefdataError(f"{p} is not valid JSON lines: {e}") from e
    for i, r in enumerate(rows):
        missing = [c for c in REQUIRED if not isinstance(r, dict) or c not in r]
        if missing:
            raise PrefdataError(
                f"{p} row {i + 1} is missing {', '.join(missing)}; a preference row needs prompt, chosen, rejected"
            )
    return [{c: r[c] for c in REQUIRED} for r in rows]


def normalize_pairs(ds: Dataset, where: str) -> Dataset:
    """Keep prompt/chosen/rejected as message lists; wrap the plain-string variant; reject anything else."""
    if len(ds) == 0:  # checked first: rows read from a zero-row file carry no columns at all
        raise PrefdataError(f"dataset {where} has no rows; export some pairs first (see `prefdata export`)")
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise PrefdataError(f"dataset {where} is missing column(s) {', '.join(missing)}; needs prompt, chosen, rejected")
    ds = ds.select_columns(list(REQUIRED))
    rows = []
    for i, r in enumerate(ds):
        rows.append({c: _messages(r[c], c, where, i) for c in REQUIRED})
    return Dataset.from_list(rows)


def _messages(value: Any, column: str, where: str, row: int) -> list[dict[str, str]]:
    role = "user" if column == "prompt" else "assistant"
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    ok = isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    if not ok:
        raise PrefdataError(
            f"dataset {where} row {row + 1}: column {column} must be a string or a list of {{role, content}} messages"
        )
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    if column != "prompt" and (len(msgs) != 1 or msgs[0]["role"] != "assistant"):
        raise PrefdataError(f"dataset {where} row {row + 1}: {column} must be one assistant message")
    return msgs


# ---------------------------------------------------------------- tokenization


def tokenize_pair(
    example: dict[str, Any], tokenizer: Any, max_prompt_length: int, max_length: int, stop_ids: Any = None
) -> dict[str, Any]:
    """Token ids of one pair: the chat template applied once, each completion ending where sampling stops.

    The prompt is rendered with the generation prompt; each completion is the rest of the rendered conversation.
    vLLM stops at the first stop token (the tokenizer's EOS and the model's `generation_config.eos_token_id`,
    given as `stop_ids`) and keeps it, so the completion ends at the template's end-of-turn token when that is a
    stop token (ChatML `<|im_end|>`, Gemma `<end_of_turn>`, Llama 3 `<|eot_id|>`), with nothing after it: tokens
    the template adds after it (a newline) are dropped, an EOS is added only if the template ends the turn with
    no stop token, and a second stop token right after the first is dropped. Prompts longer than
    `max_prompt_length` keep their last tokens; completions longer than what is left of `max_length` are cut at
    the end and flagged.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise PrefdataError("the model's tokenizer has no chat template; train from an instruct model or add one")
    eos = tokenizer.eos_token_id
    stops = {eos, *(stop_ids or ())}
    prompt_text = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    out: dict[str, Any] = {"prompt_truncated": len(prompt_ids) > max_prompt_length}
    prompt_ids = prompt_ids[-max_prompt_length:]
    budget = max_length - len(prompt_ids)
    for side in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(example["prompt"] + example[side], tokenize=False)
        if not full.startswith(prompt_text):
            raise PrefdataError("the chat template does not render the prompt as a prefix of the conversation")
        ids = tokenizer(full[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        while ids and ids[-1] not in stops and not tokenizer.decode([ids[-1]]).strip():
            ids.pop()
        if not ids or ids[-1] not in stops:
            ids.append(eos)
        while len(ids) >= 2 and ids[-2] in stops:
            ids.pop()
        out[f"{side}_truncated"] = len(ids) > budget
        out[f"{side}_ids"] = ids[:budget]
    out["prompt_ids"] = prompt_ids
    return out


def tokenize_pairs(
    ds: Dataset, tokenizer: Any, max_prompt_length: int, max_length: int, stop_ids: Any = None
) -> Dataset:
    """Tokenize every pair and warn with the number of truncated prompts and completions."""
    kwargs = {"tokenizer": tokenizer, "max_prompt_length": max_prompt_length, "max_length": max_length}
    tok = ds.map(
        tokenize_pair,
        fn_kwargs={**kwargs, "stop_ids": sorted(stop_ids or ())},
        remove_columns=ds.column_names,
        desc="Tokenizing pairs",
    )
    counts = {c: int(sum(tok[f"{c}_truncated"])) for c in ("prompt", "chosen", "rejected")}
    if any(counts.values()):
        warnings.warn(
            f"truncated {counts['prompt']} prompt(s) to their last {max_prompt_length} tokens and "
            f"{counts['chosen']} chosen / {counts['rejected']} rejected completion(s) at max_length {max_length} "
            f"(these lose their EOS) out of {len(tok)} pairs",
            stacklevel=2,
        )
    return tok


def truncation_counts(ds: Dataset) -> dict[str, int]:
    return {f"truncated/{c}": int(sum(ds[f"{c}_truncated"])) for c in ("prompt", "chosen", "rejected")}


def check_same_tokenizer(policy_tokenizer: Any, policy: str, ref: str) -> None:
    """Refuse a reference whose tokenizer differs: it would score the policy's token ids as other text."""
    from transformers import AutoTokenizer

    try:
        ref_tok = AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise PrefdataError(f"cannot load the tokenizer of reference model {ref}: {e}") from e
    mine, theirs = policy_tokenizer.get_vocab(), ref_tok.get_vocab()
    if mine != theirs:
        differ = sum(1 for t, i in mine.items() if theirs.get(t) != i) + len(set(theirs) - set(mine))
        raise PrefdataError(
            f"reference model {ref} has another tokenizer than the policy {policy} ({len(theirs)} vs {len(mine)} "
            f"tokens, {differ} differ); references score the policy's token ids, so use references that share "
            "the policy's tokenizer"
        )


def stop_token_ids(model: Any) -> list[int]:
    """The ids generation stops at (vLLM and transformers read `generation_config.eos_token_id`, a list for Gemma)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        ids |= {int(v) for v in (value if isinstance(value, list | tuple) else [value]) if v is not None}
    return sorted(ids)


# ---------------------------------------------------------------- batching and log-probs


class PairCollator:
    """Stack [chosen; rejected] with left-padded prompts and right-padded completions."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [f["prompt_ids"] for f in features] * 2
        comps = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
        p, c = max(map(len, prompts)), max(map(len, comps))
        n = len(prompts)
        input_ids = torch.full((n, p + c), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, p + c), dtype=torch.long)
        for i, (pr, co) in enumerate(zip(prompts, comps, strict=True)):
            input_ids[i, p - len(pr) : p] = torch.tensor(pr)
            input_ids[i, p : p + len(co)] = torch.tensor(co)
            attention[i, p - len(pr) : p + len(co)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "completion_mask": attention[:, p:].clone(),
        }
        if "ref_chosen_logps" in features[0]:
            batch["ref_chosen_logps"] = torch.tensor([f["ref_chosen_logps"] for f in features], dtype=torch.float64)
            batch["ref_rejected_logps"] = torch.tensor([f["ref_rejected_logps"] for f in features], dtype=torch.float64)
        return batch


def sequence_logps(model: Any, batch: dict[str, torch.Tensor], chunk_tokens: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs [2B] (float32) and completion lengths [2B] for a `PairCollator` batch.

    With `chunk_tokens` > 0 the LM head never materializes the [2B, C, V] logits: a pre-hook on the output
    embedding takes the hidden states and hands the head an empty slice, and the head is applied here to the
    completion tokens only, `chunk_tokens` at a time, each chunk recomputed in backward (activation checkpointing).
    0 uses the model's own logits (e.g. under FSDP / ZeRO-3, where the head's weight is sharded outside its forward).
    """
    mask = batch["completion_mask"]
    c = mask.shape[1]
    labels = batch["input_ids"][:, -c:]
    kwargs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0),
        "logits_to_keep": c + 1,  # position P-1+j predicts completion token j
        "use_cache": False,
    }
    if chunk_tokens <= 0:
        logits = model(**kwargs).logits[:, :-1]
        parts = []
        for s in range(0, logits.shape[0], 4):  # float32 copies of the logits, a few rows at a time
            chunk = logits[s : s + 4].float()
            parts.append(chunk.gather(-1, labels[s : s + 4].unsqueeze(-1)).squeeze(-1) - chunk.logsumexp(-1))
        return (torch.cat(parts) * mask).sum(-1), mask.sum(-1)

    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):  # DDP / accelerate wrappers
        inner = inner.module
    transform = head_transform(inner.config)
    if transform is None:  # an architecture whose logit processing was not checked: its own forward is right
        return sequence_logps(model, batch, 0)
    head = inner.get_output_embeddings()
    captured: dict[str, torch.Tensor] = {}

    def take_hidden(module: torch.nn.Module, args: tuple) -> tuple:
        captured["hidden"] = args[0]
        return (args[0][:, :0],)

    handle = head.register_forward_pre_hook(take_hidden)
    try:
        model(**kwargs)
    finally:
        handle.remove()
    sel = mask.bool()
    hidden = captured["hidden"][:, :-1][sel]  # [N, H], completion positions only
    targets = labels[sel]
    parts = []
    for s in range(0, hidden.shape[0], chunk_tokens):
        parts.append(_head_chunk(hidden[s : s + chunk_tokens], targets[s : s + chunk_tokens], head.weight, head.bias,
                                 *transform))
    per_token = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[sel]
    logps = torch.zeros(mask.shape[0], dtype=torch.float32, device=mask.device).index_add(0, rows, per_token)
    return logps, mask.sum(-1)


# What each causal LM's forward does to the head's output, read from its transformers modeling file
# (`XForCausalLM.forward`, transformers 5.x). Architectures not listed fall back to the model's own forward.
_PLAIN_HEAD = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3", "gemma", "smollm3",
    "olmo2", "starcoder2",
}  # fmt: skip
_SOFTCAP_HEAD = {"gemma2", "gemma3_text", "nanochat"}  # tanh(logits / c) * c, c = final_logit_softcapping
_DIVIDED_HEAD = {"granite", "granitemoe"}  # logits / logits_scaling
_SCALED_HEAD = {"cohere", "cohere2"}  # logits * logit_scale


def head_transform(config: Any) -> tuple[float, float, float | None] | None:
    """(multiplier, divisor, softcap) that turn the head's output into the model's logits; None if unchecked."""
    kind = getattr(config, "model_type", None)
    if kind in _PLAIN_HEAD:
        return 1.0, 1.0, None
    if kind in _SOFTCAP_HEAD:
        return 1.0, 1.0, getattr(config, "final_logit_softcapping", None)
    if kind in _DIVIDED_HEAD:
        return 1.0, float(config.logits_scaling), None
    if kind in _SCALED_HEAD:
        return float(config.logit_scale), 1.0, None
    return None


def _head_chunk(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                multiplier: float, divisor: float, softcap: float | None) -> torch.Tensor:
    """One chunk's token log-probs: float32 values; with grad, the backward of `_HeadLogps`."""
    if torch.is_grad_enabled():
        return _HeadLogps.apply(hidden, weight, bias, targets, multiplier, divisor, softcap)
    return _token_logps(hidden, targets, weight, bias, multiplier, divisor, softcap)


class _HeadLogps(torch.autograd.Function):
    """Token log-probs whose values are float32 (`_token_logps`) and whose gradient is recomputed in backward in the
    forward's autocast dtype, as the checkpointed head did before. The loss compares exact margins; the gradient
    is the one autocast gives every other layer. A float32 recompute and float32 backward matmuls made a bf16 CPU
    training step 12% slower; this costs one float32 head matmul per chunk (bench/RESULTS.md §4e)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                multiplier: float, divisor: float, softcap: float | None) -> torch.Tensor:
        device = hidden.device.type
        ctx.autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        ctx.transform = (multiplier, divisor, softcap)
        ctx.save_for_backward(hidden, weight, bias, targets)
        return _token_logps(hidden, targets, weight, bias, multiplier, divisor, softcap)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        leaves = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip((hidden, weight, bias), ctx.needs_input_grad[:3], strict=True)]
        with torch.enable_grad(), torch.autocast(hidden.device.type, dtype=ctx.autocast or torch.float32,
                                                 enabled=ctx.autocast is not None):
            out = _token_logps(leaves[0], targets, leaves[1], leaves[2], *ctx.transform, head_dtype=None)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad(out, wanted, grad) if wanted else ())
        return (*[next(got) if t is not None and t.requires_grad else None for t in leaves], None, None, None, None)


def _token_logps(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    multiplier: float,
    divisor: float,
    softcap: float | None,
    head_dtype: torch.dtype | None = torch.float32,
) -> torch.Tensor:
    """Log-probs of `targets`, the head computed in float32 even under autocast: bf16 logits keep 8 significant
    bits (0.0625 apart at |logit| 8-16, 0.125 at 16-32), an error per token larger than the margins the loss compares.
    `head_dtype` None: the head in the ambient (autocast) dtype, for `_HeadLogps.backward`'s gradient."""
    if head_dtype is None:
        logits = torch.nn.functional.linear(hidden, weight, bias)
    else:
        with torch.autocast(hidden.device.type, enabled=False):
            logits = torch.nn.functional.linear(hidden.to(head_dtype), weight.to(head_dtype),
                                                None if bias is None else bias.to(head_dtype))
    logits = logits.float()
    if multiplier != 1.0:
        logits = logits * multiplier
    if divisor != 1.0:
        logits = logits / divisor
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


# ---------------------------------------------------------------- reference log-probs and their cache


def model_fingerprint(model_path: str) -> str:
    """Identify a model by its files' content (`prefdata.fingerprint`): the same key on any machine and path, a new
    one when a checkpoint is overwritten in place (a hub name: its cached snapshot's content)."""
    from prefdata.fingerprint import model_hash

    return model_hash(model_path)


def data_fingerprint(ds: Dataset) -> str:
    """Hash of the token ids (covers the dataset, the tokenizer and the truncation settings)."""
    h = hashlib.sha256()
    for col in ("prompt_ids", "chosen_ids", "rejected_ids"):
        for ids in ds[col]:
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(b"|")
    return h.hexdigest()


@torch.no_grad()
def compute_logps(
    model: Any,
    ds: Dataset,
    collator: PairCollator,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    chunk_tokens: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """One no-grad pass: summed log-probs of every chosen and rejected completion under `model`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    try:
        for s in range(0, len(ds), batch_size):
            batch = {k: v.to(device) for k, v in collator([ds[i] for i in range(s, min(s + batch_size, len(ds)))]).items()}
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                logps, _ = sequence_logps(model, batch, chunk_tokens)
            c, r = logps.double().cpu().numpy().reshape(2, -1)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was_training)
    return np.concatenate(chosen), np.concatenate(rejected)


def cached_logps(cache_dir: Path | None, key: str, compute: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return `compute()`'s arrays, read from / written to `cache_dir/<key>.npz` (written atomically)."""
    if cache_dir is None:
        return compute()
    f = cache_dir / f"{key}.npz"
    if f.is_file():
        with np.load(f) as z:
            return z["chosen"], z["rejected"]
    chosen, rejected = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, chosen=chosen, rejected=rejected)
    os.replace(tmp, f)
    return chosen, rejected


def default_cache_dir(dataset_path: str | Path) -> Path:
    p = Path(dataset_path).expanduser().resolve()
    return (p if p.is_dir() else p.parent) / REF_CACHE_FOLDER
