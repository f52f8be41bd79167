"""Stable, content-derived ids and config hashes.

Rows are joined by these ids, never by text or row position (see DESIGN.md). A hash is sha256 over
canonical JSON (sorted keys, no whitespace), so the same content always gives the same id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


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
