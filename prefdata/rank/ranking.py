"""Ranking algorithms over pairwise outcomes, as pure functions (no I/O, no judge).

Strategies are generators (here: iterative and round robin; `sort.py`: sort; `strategies.py` lists them): they
yield the pairs they need next, receive the outcomes, and return a `Ranking`. That lets the stage batch the needs
of many prompts into one judge round and resume from cached judgments, while the algorithms stay plain
sequential code.

Pairs are canonical (x, y) = the candidate listed first in the prompt's candidate order first. How a pair
is shown to the judge (which id goes first) is the position-bias policy's business (`call_orders`); the
verdicts of those calls are folded into one `PairOutcome` by `combine`.

Iterative ranking (inferred sketch, research/papers.md 3.3(a); the paper text was not available):
  best  = c1; for c in c2..cN: best  = c if judge says c beats best  else best
  worst = c1; for c in c2..cN: worst = c if judge says worst beats c else worst
Tie rule: a tie (or a failed comparison) keeps the incumbent, the running winner or loser; the tie is
counted. The first comparison (c1, c2) is shared by both passes, so a prompt uses at most 2(N-1)-1 distinct
pairs, i.e. at most 2(N-1) comparisons per order of the policy. Because ties keep incumbents, the pass
result alone does not prove that best is strictly better than worst: `best_id`/`worst_id` are reported only
when the judged outcomes contain a chain best >= ... >= worst with at least one strict step; otherwise both
are None (all tied / failed), so a tie can never become a chosen/rejected pair.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from prefdata.judges.verdict import POLICIES, Verdict

Pair = tuple[str, str]


@dataclass
class PairOutcome:
    """The pair's result after the position-bias policy: winner id, tie, or failure."""

    x: str
    y: str
    winner: str | None = None
    tie: bool = False
    fail: bool = False
    inconsistent: bool = False
    both_orders: bool = False  # both orders were judged without failure (enters the consistency rate)

    @property
    def loser(self) -> str | None:
        if self.winner is None:
            return None
        return self.y if self.winner == self.x else self.x


@dataclass
class Ranking:
    candidate_ids: list[str]
    ranks: list[int | None]
    scores: list[float | None]
    best_id: str | None
    worst_id: str | None
    complete: bool
    cycles: int = 0


@dataclass
class Counts:
    ties: int = 0
    failures: int = 0
    inconsistent: int = 0
    agreed: int = 0

    @property
    def consistency(self) -> float | None:
        n = self.agreed + self.inconsistent
        return self.agreed / n if n else None


Strategy = Generator[list[Pair], dict[Pair, PairOutcome], Ranking]



def call_orders(pair: Pair, policy: str, seed: int, prompt_id: str) -> list[Pair]:
    """The judge calls for one pair, each as (shown first, shown second)."""
    x, y = pair
    if policy == "both":
        return [(x, y), (y, x)]
    if policy == "fixed":
        return [(x, y)]
    if policy == "random":  # seeded per pair: the same pair always gets the same order for a seed
        h = hashlib.sha256(f"{seed}:{prompt_id}:{x}:{y}".encode()).digest()
        return [(x, y)] if h[0] % 2 == 0 else [(y, x)]
    raise ValueError(f"unknown position-bias policy {policy!r}")


def combine(pair: Pair, verdicts: Sequence[Verdict]) -> PairOutcome:
    """Fold the verdicts of one pair's calls into an outcome.

    One call: its verdict. Two calls (policy `both`): a failure of either fails the pair; agreement (same
    winner id, or both ties) stands; any disagreement, including a win against a tie, is a tie counted as
    inconsistent (MT-Bench's rule).
    """
    x, y = pair
    out = PairOutcome(x, y)
    if not verdicts or any(v.verdict == "fail" for v in verdicts):
        out.fail = True
        return out
    winners = {v.winner_id for v in verdicts}
    if len(verdicts) >= 2:
        out.both_orders = True
        if len(winners) > 1:
            out.tie = True
            out.inconsistent = True
            return out
    w = winners.pop()
    if w is None:
        out.tie = True
    else:
        out.winner = w
    return out


def identical_outcome(pair: Pair) -> PairOutcome:
    """Two candidates with the same text tie without asking a judge."""
    return PairOutcome(pair[0], pair[1], tie=True)


def canon(a: str, b: str, index: dict[str, int]) -> Pair:
    return (a, b) if index[a] < index[b] else (b, a)


def count(outcomes: dict[Pair, PairOutcome]) -> Counts:
    c = Counts()
    for o in outcomes.values():
        c.ties += o.tie
        c.failures += o.fail
        c.inconsistent += o.inconsistent
        c.agreed += o.both_orders and not o.inconsistent
    return c


def strictly_above(top: str, bottom: str, outcomes: dict[Pair, PairOutcome]) -> bool:
    """Is there a chain top >= ... >= bottom of judged outcomes with at least one strict win?"""
    if top == bottom:
        return False
    edges: dict[str, list[tuple[str, bool]]] = {}
    for o in outcomes.values():
        if o.fail:
            continue
        if o.winner is not None:
            edges.setdefault(o.winner, []).append((o.loser or "", True))
        else:
            edges.setdefault(o.x, []).append((o.y, False))
            edges.setdefault(o.y, []).append((o.x, False))
    seen = {(top, False)}
    stack = [(top, False)]
    while stack:
        node, strict = stack.pop()
        if node == bottom and strict:
            return True
        for nxt, s in edges.get(node, []):
            state = (nxt, strict or s)
            if state not in seen:
                seen.add(state)
                stack.append(state)
    return False


def iterative(ids: Sequence[str]) -> Strategy:
    """Running winner for the best, running loser for the worst (see the module docstring)."""
    ids = list(ids)
    index = {c: i for i, c in enumerate(ids)}
    outcomes: dict[Pair, PairOutcome] = {}
    if len(ids) < 2:
        return Ranking(ids, [1] * len(ids), [None] * len(ids), None, None, True)
    best = worst = ids[0]
    for c in ids[1:]:
        pb, pw = canon(best, c, index), canon(worst, c, index)
        need = [pb] if pb == pw else [pb, pw]
        got = yield need
        outcomes.update({p: got[p] for p in need})
        if got[pb].winner == c:
            best = c
        if got[pw].winner == worst:
            worst = c
    if len(ids) == 2:
        o = outcomes[canon(ids[0], ids[1], index)]
        if o.winner is not None:
            order = [o.winner, o.loser or ""]
            return Ranking(order, [1, 2], [None, None], order[0], order[1], True)
        return Ranking(ids, [1, 1] if o.tie else [None, None], [None, None], None, None, o.tie)
    if not strictly_above(best, worst, outcomes):
        return Ranking(ids, [None] * len(ids), [None] * len(ids), None, None, False)
    middle = [c for c in ids if c not in (best, worst)]
    order = [best, *middle, worst]
    ranks: list[int | None] = [1] + [None] * len(middle) + [len(ids)]
    return Ranking(order, ranks, [None] * len(ids), best, worst, False)


def round_robin(ids: Sequence[str]) -> Strategy:
    """All pairs at once; ranks by points (win 1, tie 1/2), scores are Bradley-Terry log-strengths.

    A failed comparison gives no points and makes the ranking incomplete: its order rests on a pair that was
    never judged, so it is not final (a rerun of rank retries the call; export skips the prompt until then).
    """
    ids = list(ids)
    if len(ids) < 2:
        return Ranking(ids, [1] * len(ids), [None] * len(ids), None, None, True)
    pairs = list(itertools.combinations(ids, 2))
    got = yield pairs
    return aggregate_round_robin(ids, {p: got[p] for p in pairs})


def aggregate_round_robin(ids: list[str], outcomes: dict[Pair, PairOutcome]) -> Ranking:
    points = {c: 0.0 for c in ids}
    for o in outcomes.values():
        if o.fail:
            continue
        if o.winner is not None:
            points[o.winner] += 1.0
        else:
            points[o.x] += 0.5
            points[o.y] += 0.5
    bt = bradley_terry(ids, outcomes)
    pos = {c: i for i, c in enumerate(ids)}
    order = sorted(ids, key=lambda c: (-points[c], -bt[c], pos[c]))
    ranks: list[int | None] = [1 + sum(points[d] > points[c] for d in ids) for c in order]
    top, bottom = order[0], order[-1]
    separated = points[top] > points[bottom]
    complete = not any(o.fail for o in outcomes.values())
    return Ranking(
        order, ranks, [bt[c] for c in order], top if separated else None, bottom if separated else None, complete,
        cycles=count_cycles(ids, outcomes),
    )


def win_matrix(ids: list[str], outcomes: dict[Pair, PairOutcome]) -> Any:
    """W[i, j]: wins of ids[i] over ids[j], a tie half a win for each side; failures left out."""
    import numpy as np

    k = {c: i for i, c in enumerate(ids)}
    wins = np.zeros((len(ids), len(ids)))
    for o in outcomes.values():
        if o.fail:
            continue
        i, j = k[o.x], k[o.y]
        if o.winner is None:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
        elif o.winner == o.x:
            wins[i, j] += 1.0
        else:
            wins[j, i] += 1.0
    return wins


def bradley_terry(ids: list[str], outcomes: dict[Pair, PairOutcome], prior: float = 0.1, iters: int = 500) -> dict[str, float]:
    """Bradley-Terry strengths by Hunter's MM updates; a tie counts half a win for each side.

    p_i <- W_i / sum_j n_ij / (p_i + p_j), W_i = wins + ties/2, plus `prior` pseudo-ties on every pair so
    a candidate that never wins keeps a finite strength. Returned as log-strengths centred on 0.
    """
    import numpy as np

    n = len(ids)
    k = {c: i for i, c in enumerate(ids)}
    wins = win_matrix(ids, outcomes)
    wins += (prior / 2) * (1.0 - np.eye(n))
    games = wins + wins.T
    w = wins.sum(axis=1)
    p = np.ones(n)
    for _ in range(iters):
        new = w / (games / (p[:, None] + p[None, :])).sum(axis=1)
        new /= np.exp(np.log(new).mean())
        done = np.abs(new - p).max() < 1e-10
        p = new
        if done:
            break
    return {c: float(math.log(p[k[c]])) for c in ids}


def count_cycles(ids: list[str], outcomes: dict[Pair, PairOutcome]) -> int:
    """Number of intransitive triples a > b > c > a among strict outcomes."""
    beats: set[tuple[str, str]] = {(o.winner, o.loser) for o in outcomes.values() if o.winner is not None and o.loser}
    n = 0
    for a, b, c in itertools.combinations(ids, 3):
        if ((a, b) in beats and (b, c) in beats and (c, a) in beats) or ((a, c) in beats and (c, b) in beats and (b, a) in beats):
            n += 1
    return n


def rank_by_scores(ids: list[str], scores: dict[str, float | None], min_margin: float = 0.0) -> Ranking:
    """Sort by score; candidates joined by a chain of score gaps <= min_margin share a rank (tie groups).

    Ties must be transitive, or a pair inside the margin could still be exported (1.0/0.6/0.2 with margin 0.5
    would rank 0.6 above 0.2): so scores sorted high to low start a new group only where the gap to the
    previous score is > min_margin, and any two candidates in different groups differ by more than the
    margin. rank = 1 + number of candidates in higher groups. best/worst are the top and bottom scores,
    reported only when they are in different groups. Unscored candidates (failures) come last, rank null.
    """
    pos = {c: i for i, c in enumerate(ids)}
    scored = sorted((c for c in ids if scores.get(c) is not None), key=lambda c: (-(scores[c] or 0.0), pos[c]))
    failed = [c for c in ids if scores.get(c) is None]
    ranks: list[int | None] = []
    for i, c in enumerate(scored):
        if i and (scores[scored[i - 1]] or 0.0) - (scores[c] or 0.0) <= min_margin:
            ranks.append(ranks[-1])
        else:
            ranks.append(i + 1)
    ranks += [None] * len(failed)
    best = worst = None
    if len(scored) >= 2 and ranks[0] != ranks[len(scored) - 1]:
        best, worst = scored[0], scored[-1]
    order = scored + failed
    return Ranking(order, ranks, [scores.get(c) for c in order], best, worst, not failed)


__all__ = [
    "POLICIES", "Counts", "Pair", "PairOutcome", "Ranking", "aggregate_round_robin", "bradley_terry",
    "call_orders", "canon", "combine", "count", "count_cycles", "identical_outcome", "iterative",
    "rank_by_scores", "round_robin", "strictly_above",
]
