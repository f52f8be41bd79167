"""The `sort` strategy: a complete ranking from about N·log₂N pairs instead of round robin's N(N-1)/2.

Export shapes that need every position (best-vs-each, all, adjacent, ranking) had only round robin. This
strategy speaks the same generator protocol as `ranking.round_robin`/`iterative` (yield canonical pairs,
receive their `PairOutcome`s, return a `Ranking`), so rank batches all prompts' needs into synchronous rounds
and the position-bias policy stays outside (`call_orders` + `combine`: a disagreement is an inconsistent tie).

Phases, all in one generator:
1. Bottom-up merge sort. Every merge of a level advances one comparison per round, so a round asks at most
   N/2 pairs. A tie, an inconsistent pair or a failure keeps the left head (stable). With a consistent judge
   that never ties the sort alone is exact: each pair adjacent in the true order is compared directly.
2. Bradley-Terry over every outcome (a tie is half a win for each side; a Gaussian prior of precision `PRIOR`
   keeps strengths finite), fitted by Newton's method. Its Hessian is the Fisher information (plus the prior),
   whose inverse gives each strength's standard error and the standard error of any strength gap.
3. Refinement while the budget lasts: compare the pairs never compared whose order is least certain, i.e.
   largest P(wrong) = Φ(-|Δθ|/se(Δθ)), as a matching (a candidate at most once a round), then refit. A pair is
   never asked twice: rank caches calls by content, so a repeat returns the same verdicts and adds nothing.

Order: by strength; while the strict wins have no cycle (a consistent judge), the highest-strength candidate
that no unplaced candidate beats through a chain of strict wins, so a consistent judge's order is kept exactly.
Ranks: a new rank starts only where every candidate above is strictly above every candidate below (`strictly_above`: a chain of judged outcomes with at least one strict win), so candidates the judge cannot
separate share a rank, and no pair across ranks rests only on ties or inconsistent pairs. best/worst are
reported only when there are two ranks or more; a failed pair makes the ranking incomplete (a rerun retries it,
replays the same cached outcomes and so the same decisions, and continues).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from prefdata.rank.ranking import Pair, PairOutcome, Ranking, canon, count_cycles, win_matrix

PRIOR = 0.1  # Gaussian prior precision on each log-strength (variance 10): finite strengths under perfect separation
REFINE_SHARE = 0.25  # a refinement round asks at most N/4 pairs: smaller rounds adapt more often


@dataclass
class SortRanking(Ranking):
    """A `Ranking` plus what `Ranking` has no field for: strength standard errors from the Fisher information
    (aligned with candidate_ids, about the mean strength: `centred_stderr`), and the pairs and rounds used."""

    stderr: list[float | None] = field(default_factory=list)
    pairs: int = 0
    rounds: int = 0


SortStrategy = Generator[list[Pair], dict[Pair, PairOutcome], SortRanking]


def sort_budget(n: int) -> int:
    """Default pairs per prompt: N·⌈log₂N⌉ (the issue's cap; 2·N·⌈log₂N⌉ calls with both orders), and never more
    than half of round robin's pairs unless the merge sort itself may need them (N ≤ 8)."""
    if n < 2:
        return 0
    rr = n * (n - 1) // 2
    return min(rr, n * math.ceil(math.log2(n)), max(merge_sort_bound(n), rr // 2))


def merge_sort_bound(n: int) -> int:
    """The most pairs the bottom-up merge sort can ask: a merge of runs of a and b items asks at most a+b-1."""
    runs, total = [1] * n, 0
    while len(runs) > 1:
        nxt = [runs[k] + runs[k + 1] for k in range(0, len(runs) - 1, 2)]
        total += sum(m - 1 for m in nxt)
        runs = nxt + ([runs[-1]] if len(runs) % 2 else [])
    return total


def sort(ids: Sequence[str], budget: int | None = None, stop_below: float = 0.0) -> SortStrategy:
    """Merge sort, Bradley-Terry over every outcome, then refinement (see the module docstring).

    `budget`: pairs per prompt (default `sort_budget`); the merge sort always finishes, refinement spends what is
    left. `stop_below`: end refinement early once no uncompared pair has P(wrong order) above it.
    """
    ids = list(ids)
    n = len(ids)
    if n < 2:
        return SortRanking(ids, [1] * n, [None] * n, None, None, True, stderr=[None] * n)
    index = {c: i for i, c in enumerate(ids)}
    outcomes: dict[Pair, PairOutcome] = {}
    rounds = 0

    # 1. bottom-up merge sort, one comparison per merge per round
    runs: list[list[str]] = [[c] for c in ids]
    while len(runs) > 1:
        merges = [(list(runs[k]), list(runs[k + 1]), []) for k in range(0, len(runs) - 1, 2)]
        carry = [runs[-1]] if len(runs) % 2 else []
        while True:
            live = [(left, right, out) for left, right, out in merges if left and right]
            if not live:
                break
            need = [canon(left[0], right[0], index) for left, right, _ in live]
            got = yield need
            rounds += 1
            for (left, right, out), pair in zip(live, need, strict=True):
                outcomes[pair] = got[pair]
                out.append(right.pop(0) if got[pair].winner == right[0] else left.pop(0))
        runs = [out + left + right for left, right, out in merges] + carry
    sorted_ids = runs[0]

    # 2.+3. fit, then compare the least certain uncompared pairs while the budget lasts
    budget = sort_budget(n) if budget is None else budget
    per_round = max(1, int(n * REFINE_SHARE))
    while True:
        theta, cov = fit_strengths(ids, outcomes)
        left_over = budget - len(outcomes)
        if left_over <= 0:
            break
        need = least_certain(ids, theta, cov, outcomes, min(left_over, per_round), stop_below)
        if not need:
            break
        got = yield need
        rounds += 1
        outcomes.update({p: got[p] for p in need})
    return finish(ids, outcomes, theta, cov, tiebreak=sorted_ids, rounds=rounds)


def fit_strengths(ids: list[str], outcomes: dict[Pair, PairOutcome], prior: float = PRIOR) -> tuple[np.ndarray, np.ndarray]:
    """Bradley-Terry log-strengths θ (MAP under a N(0, 1/prior) prior) and their covariance (inverse Fisher information).

    log L = Σ_ij W_ij log σ(θ_i - θ_j) - prior/2 |θ|², W_ij = wins of i over j + ties/2. Gradient
    g_i = Σ_j (W_ij - n_ij σ(θ_i - θ_j)) - prior θ_i, n = W + Wᵀ; Fisher information
    H = Σ_ij n_ij p_ij (1 - p_ij) (e_i - e_j)(e_i - e_j)ᵀ / 2 + prior I. Newton steps with backtracking (the
    objective is concave); the prior centres θ on 0.
    """
    n = len(ids)
    w = win_matrix(ids, outcomes)
    games = w + w.T

    def objective(t: np.ndarray) -> float:
        d = t[:, None] - t[None, :]
        return float((w * -np.logaddexp(0.0, -d)).sum() - prior / 2 * (t @ t))

    def information(t: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(t[:, None] - t[None, :])))
        c = games * p * (1.0 - p)
        return np.diag(c.sum(axis=1) + prior) - c

    theta = np.zeros(n)
    value = objective(theta)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        grad = (w - games * p).sum(axis=1) - prior * theta
        step = np.linalg.solve(information(theta), grad)
        scale = 1.0
        while scale > 1e-6:
            new = theta + scale * step
            new_value = objective(new)
            if new_value >= value - 1e-12:
                break
            scale /= 2
        theta, value = new, new_value
        if np.abs(scale * step).max() < 1e-10:
            break
    return theta, np.linalg.inv(information(theta))


def least_certain(ids: list[str], theta: np.ndarray, cov: np.ndarray, outcomes: dict[Pair, PairOutcome],
                  limit: int, stop_below: float = 0.0) -> list[Pair]:  # fmt: skip
    """Up to `limit` never-asked pairs, a matching, by descending P(wrong order) = Φ(-|Δθ|/se(Δθ))."""
    n = len(ids)
    index = {c: i for i, c in enumerate(ids)}
    var = np.diag(cov)
    gap_se = np.sqrt(np.maximum(var[:, None] + var[None, :] - 2 * cov, 1e-12))
    z = np.abs(theta[:, None] - theta[None, :]) / gap_se
    wrong = 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2))
    cand = [
        (round(float(wrong[i, j]), 9), -i, -j)
        for i in range(n) for j in range(i + 1, n)
        if (ids[i], ids[j]) not in outcomes and wrong[i, j] > stop_below
    ]  # fmt: skip
    cand.sort(reverse=True)
    used: set[int] = set()
    out: list[Pair] = []
    for _, mi, mj in cand:
        i, j = -mi, -mj
        if i in used or j in used:
            continue
        used.update((i, j))
        out.append(canon(ids[i], ids[j], index))
        if len(out) >= limit:
            break
    return out


def above_matrix(ids: list[str], outcomes: dict[Pair, PairOutcome]) -> tuple[np.ndarray, np.ndarray]:
    """(S, R): S[a, b] = a chain a >= ... >= b of judged outcomes with a strict win (as `strictly_above`);
    R[a, b] = a chain of strict wins only."""
    n = len(ids)
    k = {c: i for i, c in enumerate(ids)}
    strict = np.zeros((n, n), dtype=bool)
    weak = np.eye(n, dtype=bool)
    for o in outcomes.values():
        if o.fail:
            continue
        i, j = k[o.x], k[o.y]
        if o.winner is None:
            weak[i, j] = weak[j, i] = True
        elif o.winner == o.x:
            strict[i, j] = weak[i, j] = True
        else:
            strict[j, i] = weak[j, i] = True
    reach_weak = _closure(weak)
    reach_strict = _closure(strict)
    s = (reach_weak.astype(np.int64) @ strict.astype(np.int64) @ reach_weak.astype(np.int64)) > 0
    return s, reach_strict


def _closure(adj: np.ndarray) -> np.ndarray:
    """Transitive closure by Warshall's algorithm."""
    r = adj.copy()
    for m in range(len(r)):
        r |= r[:, m : m + 1] & r[m : m + 1, :]
    return r


def centred_stderr(cov: np.ndarray) -> np.ndarray:
    """Each strength's standard error about the prompt's mean strength: sqrt(diag(P Σ P)), P = I - 11ᵀ/n.

    The prior alone fixes the strengths' common level, so raw variances share a large common part that cancels in
    any difference. Without it, sqrt(se_i² + se_j²) is close to the exact se(θ_i - θ_j) (measured: export keeps
    the same pairs either way), which lets export judge any pair from one number per candidate."""
    n = len(cov)
    p = np.eye(n) - 1.0 / n
    return np.sqrt(np.maximum(np.diag(p @ cov @ p), 0.0))


def finish(ids: list[str], outcomes: dict[Pair, PairOutcome], theta: np.ndarray, cov: np.ndarray,
           tiebreak: list[str], rounds: int = 0) -> SortRanking:  # fmt: skip
    """Order, tie groups, best/worst and strengths from every outcome (see the module docstring)."""
    n = len(ids)
    pos = {c: i for i, c in enumerate(tiebreak)}
    s, r = above_matrix(ids, outcomes)
    # A judge that never contradicts itself defines a partial order the ranking must extend (this makes a noise-free
    # sort exact); once the strict wins have a cycle the strengths alone order (measured: better Kendall τ under noise).
    must = r if not r.diagonal().any() else np.zeros_like(r)
    left = set(range(n))
    order: list[int] = []
    while left:
        free = [i for i in left if not any(must[u, i] for u in left if u != i)]
        pick = min(free, key=lambda i: (-round(float(theta[i]), 9), pos[ids[i]]))
        order.append(pick)
        left.remove(pick)
    ranks: list[int] = []
    for at in range(n):
        cut = at > 0 and bool(s[np.ix_(order[:at], order[at:])].all())
        ranks.append(at + 1 if at == 0 or cut else ranks[-1])
    separated = ranks[0] != ranks[-1]
    se = centred_stderr(cov)
    complete = not any(o.fail for o in outcomes.values())
    return SortRanking(
        [ids[i] for i in order], list(ranks), [float(theta[i]) for i in order],
        ids[order[0]] if separated else None, ids[order[-1]] if separated else None, complete,
        cycles=count_cycles(ids, outcomes), stderr=[float(se[i]) for i in order], pairs=len(outcomes), rounds=rounds,
    )  # fmt: skip


__all__ = ["PRIOR", "SortRanking", "above_matrix", "centred_stderr", "finish", "fit_strengths", "least_certain", "merge_sort_bound", "sort", "sort_budget"]
