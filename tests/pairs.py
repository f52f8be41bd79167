"""Pair selection, row by row: the reference the tests hold `prefdata.export.tables` (polars) to.

Which (chosen, rejected) candidates a ranking supports, and why the others are dropped. Pure functions over one
prompt's ranking row, so every rule can be tested without a run directory.
A pair is only ever formed across a strict preference: equal ranks (ties), a missing best/worst and
identical texts never become chosen/rejected (the anchors' chosen == rejected bug, anchors.md §0.3).
Every pair that is skipped is counted under a named reason, so the summary and the card can say
exactly what was filtered and how much.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefdata.export.tables import DROP_REASONS, NEEDS_FULL_ORDER, PAIR_STRATEGIES  # noqa: F401  (tests read them here too)


@dataclass(frozen=True)
class RankedCandidate:
    """The fields of one completion that pair filters and rows need."""

    candidate_id: str
    text: str
    finish_reason: str | None = None
    n_tokens: int | None = None
    sampler_hash: str | None = None
    kind: str | None = None
    model: str | None = None
    rank: int | None = None
    score: float | None = None
    input_truncated: bool = False  # the reward model saw this completion cut from the left: its score is unreliable
    stderr: float | None = None  # sort rankings: the standard error of the score (a Bradley-Terry log-strength)


def ranking_pairs(ranking: Mapping[str, Any], strategy: str) -> tuple[list[tuple[str, str]], Counter[str]]:
    """The (chosen_id, rejected_id) pairs one ranking row supports under `strategy`, and the skipped ones.

    `ranking` holds candidate_ids (best first), ranks (aligned, 1 = best, equal = tied), best_id and
    worst_id. Strategies in NEEDS_FULL_ORDER must only be given complete rankings (checked by the caller,
    which can name the judge and say how to fix it).
    """
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"unknown pair strategy {strategy!r}")
    drops: Counter[str] = Counter()
    ids: list[str] = list(ranking.get("candidate_ids") or [])
    ranks: list[int | None] = list(ranking.get("ranks") or [None] * len(ids))
    best, worst = ranking.get("best_id"), ranking.get("worst_id")

    if strategy == "best-worst":
        if best is None or worst is None or best == worst:
            drops["no_preference"] += 1
            return [], drops
        return [(best, worst)], drops

    rank_of = dict(zip(ids, ranks, strict=True))
    if any(r is None for r in ranks):
        raise ValueError("ranking has unknown positions; a full order is needed")
    # Stable sort by rank keeps the ranker's order inside a tie group.
    order = sorted(ids, key=lambda c: rank_of[c])  # type: ignore[arg-type, return-value]
    pairs: list[tuple[str, str]] = []

    def _add(a: str, b: str) -> None:
        ra, rb = rank_of[a], rank_of[b]
        assert ra is not None and rb is not None
        if ra < rb:
            pairs.append((a, b))
        elif rb < ra:
            pairs.append((b, a))
        else:
            drops["tie"] += 1

    if strategy == "best-vs-each":
        if best is None or best not in rank_of:
            drops["no_preference"] += 1
            return [], drops
        for c in order:
            if c != best:
                _add(best, c)
    elif strategy == "all":
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                _add(a, b)
    else:  # adjacent
        for a, b in zip(order, order[1:], strict=False):
            _add(a, b)
    return pairs, drops


def direct_verdicts(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, frozenset[str]], list[str | None]]:
    """Group judge calls by (prompt_id, unordered candidate pair): the winner of each call, None for a tie.

    Failed calls are left out: a failure says nothing about the pair. Pointwise rows (no b_id) are ignored.
    """
    out: dict[tuple[str, frozenset[str]], list[str | None]] = {}
    for r in rows:
        a, b, verdict = r.get("a_id"), r.get("b_id"), r.get("verdict")
        if not a or not b or a == b or verdict not in ("a", "b", "tie"):
            continue
        winner = None if verdict == "tie" else r.get("winner_id") or (a if verdict == "a" else b)
        out.setdefault((r["prompt_id"], frozenset((a, b))), []).append(winner)
    return out


def pair_drop_reason(
    chosen: RankedCandidate,
    rejected: RankedCandidate,
    *,
    verdicts: Sequence[str | None] | None = None,
    min_margin: float = 0.0,
    keep_truncated: bool = False,
    keep_inconsistent: bool = False,
) -> str | None:
    """Why this pair must not be exported (a DROP_REASONS key), or None to keep it.

    `verdicts` are the direct judge calls between the two (None when never compared directly: then the
    ranking's order stands on its own). Identical texts are dropped whatever the flags say.
    """
    if verdicts and not keep_inconsistent and any(w != chosen.candidate_id for w in verdicts):
        return "inconsistent"
    if not keep_truncated and (chosen.finish_reason == "length" or rejected.finish_reason == "length"):
        return "truncated"
    if not keep_truncated and (chosen.input_truncated or rejected.input_truncated):
        return "judge_input_truncated"
    if chosen.text.strip() == rejected.text.strip():
        return "identical_text"
    if min_margin > 0:
        m = pair_margin(chosen, rejected)
        if m is None:
            return "margin_unknown"
        need = min_margin
        if chosen.stderr is not None and rejected.stderr is not None:  # in standard errors of the gap
            need = min_margin * math.sqrt(chosen.stderr * chosen.stderr + rejected.stderr * rejected.stderr)
        if m < need:
            return "below_margin"
    return None


def pair_margin(chosen: RankedCandidate, rejected: RankedCandidate) -> float | None:
    if chosen.score is None or rejected.score is None:
        return None
    return float(chosen.score) - float(rejected.score)
