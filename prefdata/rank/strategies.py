"""The pairwise strategies by name, and each one's most judge calls per prompt.

A registry of its own: `sort.py` builds on `ranking.py`'s types, so neither of them can list both without an
import circle. `rank/pairwise.py` drives every entry the same way (a generator of pair rounds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prefdata.rank.ranking import iterative, round_robin
from prefdata.rank.sort import sort, sort_budget

STRATEGIES: dict[str, Callable[[Sequence[str]], Any]] = {"iterative": iterative, "round-robin": round_robin, "sort": sort}

# Strategies whose ranking orders every candidate (export's best-vs-each, all, adjacent and the ranking shape).
FULL_ORDER = ("round-robin", "sort")


def comparison_bound(strategy: str, n: int, policy: str) -> int:
    """Upper bound of judge calls for one prompt (the progress bar's total, and tests)."""
    per = 2 if policy == "both" else 1
    if n < 2:
        return 0
    if strategy == "iterative":
        return per * (2 * (n - 1) - 1)
    if strategy == "sort":
        return per * sort_budget(n)
    return per * n * (n - 1) // 2


__all__ = ["FULL_ORDER", "STRATEGIES", "comparison_bound"]
