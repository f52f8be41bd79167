"""Reward-model (pointwise) judge: any transformers AutoModelForSequenceClassification folder.

Why it is built this way (anchors.md section 7):
- the prompt and candidate go through the *reward model's* chat template, never the policy's, and are
  tokenized without adding special tokens a second time (the template already has them);
- batches are sorted by length (less padding), padded on the right with an attention mask, so a real token
  never sees a pad and keeps the position it has when scored alone; the pad id is the model config's, the
  one the head uses to find the last real token (not the tokenizer's); scores come back in request order;
- an input longer than max_length is cut from the left (the response end is kept) and flagged `truncated`;
- on out-of-memory the batch is halved and scoring goes on; a single item that still does not fit fails alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.judges.verdict import ScoreRequest, ScoreResult

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json")


def is_reward_model_dir(path: str) -> bool:
    """A folder given as --judge is meant as a reward model (whatever is in it; `check_reward_model_dir` says
    what is wrong with it)."""
    return Path(path).expanduser().is_dir()


def check_reward_model_dir(path: str) -> Path:
    """The folder, if it can be a reward model; else one clear error (never a random head scoring silently)."""
    import json

    from prefdata.judges.templates import available_templates

    p = Path(path).expanduser()
    alternatives = (f"give a reward-model folder (config.json, weights and tokenizer of a *ForSequenceClassification "
                    f"model), a judge template name ({', '.join(available_templates())}) or a template .yaml file")
    if not any(p.iterdir()):
        raise PrefdataError(f"--judge {p} is an empty folder; {alternatives}")
    if not (p / "config.json").is_file():
        raise PrefdataError(f"--judge {p} is a folder without config.json, so not a reward model; {alternatives}")
    try:
        arch = json.loads((p / "config.json").read_text()).get("architectures") or []
    except (ValueError, AttributeError) as e:
        raise PrefdataError(f"{p / 'config.json'} is not a valid model config ({e})") from e
    if not any(str(a).endswith("ForSequenceClassification") for a in arch):
        what = ", ".join(map(str, arch)) or "no architecture"
        raise PrefdataError(
            f"--judge {p} holds {what}, not a reward model (a *ForSequenceClassification model with a trained score "
            f"head); to judge with a chat model use a template: --judge verdict-only --judge-model {p}"
        )
    if not any(any(p.glob(g)) for g in WEIGHT_GLOBS):
        raise PrefdataError(f"--judge {p} holds only a config and no weights (*.safetensors or *.bin); copy the whole model folder")
    return p


def load_rm_tokenizer(p: Path) -> Any:
    """The reward model's own tokenizer, with its chat template (shared by the transformers and vLLM backends)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(p.resolve()))
    except (OSError, ValueError, TypeError) as e:
        raise PrefdataError(f"reward model {p} has no usable tokenizer ({type(e).__name__}); copy its tokenizer files") from e
    if not getattr(tok, "chat_template", None):
        raise PrefdataError(
            f"reward model {p} has no chat template in its tokenizer; add one (tokenizer_config.json) so prompts "
            "are formatted the way the reward model was trained"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


class RewardModelJudge:
    """Scores (prompt, candidate) with a sequence-classification model; label `label_index` is the reward."""

    backend = "hf"  # recorded in run.json (rank); not in config(): both backends share one judge hash

    def __init__(
        self,
        model_dir: str,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
        label_index: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from prefdata.llm.hardware import resolve_dtype

        p = check_reward_model_dir(model_dir)
        self.model_dir = str(p.resolve())
        self.tok = load_rm_tokenizer(p)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.torch_dtype = getattr(torch, resolve_dtype(dtype))
        self.model, info = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, dtype=self.torch_dtype, output_loading_info=True
        )
        fresh = sorted(set(info.get("missing_keys") or []) | {str(k[0]) if isinstance(k, tuple) else str(k)
                                                                for k in info.get("mismatched_keys") or []})
        if fresh:
            raise PrefdataError(
                f"reward model {p} has no trained weights for {', '.join(fresh[:3])}{' ...' if len(fresh) > 3 else ''} "
                "(they would be initialised at random and the scores would mean nothing); use a trained reward model"
            )
        # The head pools the rightmost token that is not the *config's* pad id, so batches are padded with that id
        # (not the tokenizer's): otherwise, when the two differ, a score depends on what else is in the batch.
        text_cfg = self.model.config.get_text_config()
        if text_cfg.pad_token_id is None:
            text_cfg.pad_token_id = self.tok.pad_token_id
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.pad_id = int(text_cfg.pad_token_id)
        self.model.to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_length = int(max_length or min(limit, 8192))
        self.batch_size = max(1, batch_size)
        self.label_index = label_index

    def config(self) -> dict[str, object]:
        return {
            "kind": "reward-model",
            "model": self.model_dir,
            "max_length": self.max_length,
            "dtype": str(self.torch_dtype).replace("torch.", ""),
            "label_index": self.label_index,
        }

    def encode(self, req: ScoreRequest) -> tuple[list[int], bool]:
        msgs = [{"role": r, "content": c} for r, c in req.messages]
        msgs.append({"role": "assistant", "content": req.candidate.text})
        text = self.tok.apply_chat_template(msgs, tokenize=False)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            return ids[-self.max_length :], True
        return ids, False

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        encoded = [self.encode(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(encoded[i][0]))
        results: dict[int, ScoreResult] = {}
        pos = 0
        bs = self.batch_size
        while pos < len(order):
            idx = order[pos : pos + bs]
            t0 = time.monotonic()
            try:
                scores = self._forward([encoded[i][0] for i in idx])
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not _is_oom(e):
                    raise
                _free_cache()
                if bs > 1:
                    bs = max(1, bs // 2)
                    continue
                i = idx[0]
                results[i] = ScoreResult(requests[i].candidate.id, None, len(encoded[i][0]), encoded[i][1], "out of memory")
                pos += 1
                continue
            lat = (time.monotonic() - t0) / len(idx)
            for i, s in zip(idx, scores, strict=True):
                results[i] = ScoreResult(requests[i].candidate.id, s, len(encoded[i][0]), encoded[i][1], None, lat)
            pos += len(idx)
        return [results[i] for i in range(len(requests))]

    def _forward(self, seqs: list[list[int]]) -> list[float]:
        import torch

        width = max(len(s) for s in seqs)
        pad = self.pad_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):  # right padding, fixed
            ids[j, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[j, : len(s)] = 1
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        logits: Any = out.logits.float()
        return [float(x) for x in logits[:, self.label_index].cpu()]


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
