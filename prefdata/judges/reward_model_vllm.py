"""Reward-model (pointwise) judge on vLLM's pooling runner: the same inputs as `RewardModelJudge`, scored by vLLM.

Why it is built this way:
- the folder is checked by the same rules as the transformers judge (`check_reward_model_dir`), and the inputs
  are the same token ids: the reward model's chat template, no second special tokens, cut from the left at
  max_length and flagged `truncated` (the `encode` of `RewardModelJudge`, reused);
- vLLM batches without padding and pools the last token of each sequence, while transformers pools the last
  token that is not the config's pad id; trailing pad-id tokens are dropped before scoring so that both pool
  the same position (a causal model's hidden state there does not depend on what follows);
- raw logits are asked for (`use_activation=False`): transformers' score is the logit, not a sigmoid of it;
- the score head must be in the checkpoint: vLLM would build a random one for a folder without it;
- a request that fails is retried alone, and one that still fails is a value (`error`), not a crashed run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.judges.reward_model import RewardModelJudge, check_reward_model_dir, load_rm_tokenizer
from prefdata.judges.verdict import ScoreRequest, ScoreResult

HEAD_NAMES = ("score.weight",)  # vLLM's sequence-classification adapter reads the head from `score`


def check_head_weights(p: Path) -> None:
    """Refuse a checkpoint without a trained `score` head (safetensors only; other formats are left to vLLM)."""
    files = sorted(p.glob("*.safetensors"))
    if not files:
        return
    index = p / "model.safetensors.index.json"
    if index.is_file():
        names = set(json.loads(index.read_text()).get("weight_map", {}))
    else:
        from safetensors import safe_open

        names = set()
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                names.update(st.keys())
    if not any(n.endswith(h) for n in names for h in HEAD_NAMES):
        raise PrefdataError(
            f"reward model {p} has no trained weights for score.weight (vLLM would initialise the head at random "
            "and the scores would mean nothing); use a trained reward model, or --rm-backend hf"
        )


class VLLMRewardModelJudge:
    """Scores (prompt, candidate) with a sequence-classification model served by an in-process vLLM pooling engine."""

    backend = "vllm"

    def __init__(
        self,
        model_dir: str,
        *,
        max_length: int | None = None,
        dtype: str = "auto",
        label_index: int = 0,
        seed: int = 0,
        llm: Any = None,
        tensor_parallel_size: int = 1,
    ) -> None:
        p = check_reward_model_dir(model_dir)
        check_head_weights(p)
        self.model_dir = str(p.resolve())
        self.tok = load_rm_tokenizer(p)
        cfg = json.loads((p / "config.json").read_text())
        text_cfg = cfg.get("text_config") or cfg
        pad = text_cfg.get("pad_token_id", cfg.get("pad_token_id"))
        self.pad_id = int(pad if pad is not None else self.tok.pad_token_id)
        limit = text_cfg.get("max_position_embeddings") or cfg.get("max_position_embeddings") or 4096
        self.max_length = int(max_length or min(int(limit), 8192))
        self.label_index = label_index
        from prefdata.llm.hardware import resolve_dtype

        self.dtype = dtype = resolve_dtype(dtype)
        if llm is None:
            from prefdata.llm.vllm_engine import start_engine

            llm = start_engine(self.model_dir, runner="pooling", dtype=dtype, max_model_len=self.max_length, seed=seed,
                               tensor_parallel_size=tensor_parallel_size)
        self.llm = llm

    def config(self) -> dict[str, object]:
        # the same fields as the transformers judge, so both backends share one judge hash (and one cache)
        return {"kind": "reward-model", "model": self.model_dir, "max_length": self.max_length, "dtype": self.dtype,
                "label_index": self.label_index}

    def encode(self, req: ScoreRequest) -> tuple[list[int], bool]:
        return RewardModelJudge.encode(self, req)  # type: ignore[arg-type]  # uses only .tok and .max_length

    def _pooled_ids(self, ids: list[int]) -> list[int]:
        end = len(ids)
        while end > 1 and ids[end - 1] == self.pad_id:
            end -= 1
        return ids[:end]

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        if not requests:
            return []
        encoded = [self.encode(r) for r in requests]
        t0 = time.monotonic()
        try:
            scores: list[float | None] = self._classify([self._pooled_ids(ids) for ids, _ in encoded])
            errors: list[str | None] = [None] * len(requests)
        except Exception:  # noqa: BLE001 - one bad input must not lose the batch: retry each alone
            scores, errors = [], []
            for ids, _ in encoded:
                try:
                    scores.append(self._classify([self._pooled_ids(ids)])[0])
                    errors.append(None)
                except Exception as e:  # noqa: BLE001 - recorded as the item's failure
                    scores.append(None)
                    errors.append(f"{type(e).__name__}: {e}"[:300])
        lat = (time.monotonic() - t0) / len(requests)
        return [ScoreResult(r.candidate.id, s, len(ids), cut, err, lat if err is None else 0.0)
                for r, (ids, cut), s, err in zip(requests, encoded, scores, errors, strict=True)]

    def _classify(self, seqs: list[list[int]]) -> list[float | None]:
        from vllm import PoolingParams

        prompts: Any = [{"prompt_token_ids": s} for s in seqs]
        outs = self.llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [float(o.outputs.probs[self.label_index]) for o in outs]
