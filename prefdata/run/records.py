"""The run directory's tables (their schemas and file names) and the stable ids that join them.

Every stage writes and reads its rows through `RunDir` (store.py) with these schemas, so a table's shape
is declared once. Rows are joined by content-derived ids, never by text or row position (see DESIGN.md).
A hash is sha256 over canonical JSON (sorted keys, no whitespace), so the same content always gives the same id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import polars as pl

# A conversation: the prompt of a prompt row, and the prompt/completion columns of a conversational export.
MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))

PROMPT_SCHEMA = {"prompt_id": pl.String, "messages": MESSAGES, "source": pl.String, "reference": pl.String}

CANDIDATE_SCHEMA = {
    "prompt_id": pl.String,
    "candidate_id": pl.String,
    "sampler_hash": pl.String,
    "kind": pl.String,
    "index": pl.Int32,
    "text": pl.String,
    "finish_reason": pl.String,
    "n_tokens": pl.Int32,
    "model": pl.String,
}

# The order candidates of one prompt are presented to a judge in (then by kind, index and id).
KIND_ORDER = {"sample": 0, "greedy": 1, "temp2": 2, "reference": 3}

JUDGMENT_SCHEMA = {
    "prompt_id": pl.String, "a_id": pl.String, "b_id": pl.String, "order": pl.Int8, "verdict": pl.String,
    "winner_id": pl.String, "score": pl.Float64, "raw": pl.String, "error": pl.String, "latency_s": pl.Float64,
    "attempts": pl.Int32, "repaired": pl.Boolean, "n_tokens": pl.Int32, "truncated": pl.Boolean,
    "judge_hash": pl.String, "created": pl.Float64, "content_key": pl.String,
}

RANKING_SCHEMA = {
    "prompt_id": pl.String, "judge_hash": pl.String, "strategy": pl.String, "candidate_ids": pl.List(pl.String),
    "ranks": pl.List(pl.Int64), "scores": pl.List(pl.Float64), "best_id": pl.String, "worst_id": pl.String,
    "complete": pl.Boolean, "n_candidates": pl.Int64, "comparisons": pl.Int64, "ties": pl.Int64, "failures": pl.Int64,
    "inconsistent": pl.Int64, "consistency": pl.Float64, "margin": pl.Float64, "too_long": pl.Int64,
}
# Columns only rankings of the `sort` strategy carry (other strategies' files keep RANKING_SCHEMA alone):
# score_stderr, aligned with candidate_ids, is the standard error of each Bradley-Terry log-strength about the
# prompt's mean strength (Fisher information); pairs_compared and rounds: the distinct pairs and the synchronous
# rounds the strategy used (`comparisons` counts the judge calls).
SORT_RANKING_SCHEMA = {"score_stderr": pl.List(pl.Float64), "pairs_compared": pl.Int64, "rounds": pl.Int64}

# The trainer's summary in its output folder, written last: its presence means the final model is complete.
TRAIN_SUMMARY = "prefdata_train.json"


def canonical_json(obj: Any) -> str:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def prompt_id(messages: list[dict[str, str]]) -> str:
    """Hash of the canonical messages (role and content only, in order)."""
    canon = [{"role": m["role"], "content": m["content"]} for m in messages]
    return stable_hash(canon)


def candidate_id(prompt_id_: str, sampler_hash: str, kind: str, index: int) -> str:
    """One id per (prompt, sampler config, candidate kind, sample index): unique even when texts repeat."""
    return stable_hash([prompt_id_, sampler_hash, kind, index])


def content_key(
    judge_hash: str, messages: Any, reference: str | None, first_text: str, second_text: str | None
) -> str:
    """What a judgment depends on besides the judge: the prompt, the reference and the texts in the order shown.

    `messages`: (role, content) pairs or {"role", "content"} dicts. second_text is None for a score.
    """
    msgs = [[m["role"], m["content"]] if isinstance(m, dict) else [m[0], m[1]] for m in messages]
    blob = json.dumps([judge_hash, msgs, reference, first_text, second_text], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
