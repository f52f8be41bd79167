"""The `sort` ranking strategy (prefdata/rank/sort.py), driven through its generator protocol with both orders."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from prefdata.judges.verdict import Verdict
from prefdata.rank.ranking import Pair, PairOutcome, call_orders, combine, strictly_above
from prefdata.rank.sort import SortRanking, merge_sort_bound, sort, sort_budget
from tests.pairs import ranking_pairs

Call = Callable[[str, str], Verdict]


def drive(ids: list[str], judge: Call, cache: dict[tuple[str, str], Verdict] | None = None,
          **kw: object) -> tuple[SortRanking, dict[Pair, PairOutcome], list[tuple[str, str]]]:  # fmt: skip
    """Run `sort` to the end as rank does: each pair judged in both orders; a call in `cache` is not asked again,
    unless it failed (a rerun retries failures). Returns the ranking, the outcomes and the calls asked."""
    cache = {} if cache is None else cache
    asked: list[tuple[str, str]] = []
    outcomes: dict[Pair, PairOutcome] = {}
    gen = sort(ids, **kw)  # type: ignore[arg-type]
    try:
        need = next(gen)
        while True:
            assert len(set(need)) == len(need) and not set(need) & set(outcomes), "a pair was asked twice"
            got = {}
            for pair in need:
                vs = []
                for a, b in call_orders(pair, "both", 0, "p"):
                    if (a, b) not in cache or cache[(a, b)].verdict == "fail":
                        cache[(a, b)] = judge(a, b)
                        asked.append((a, b))
                    vs.append(cache[(a, b)])
                got[pair] = combine(pair, vs)
            outcomes.update(got)
            need = gen.send(got)
    except StopIteration as stop:
        return stop.value, outcomes, asked


def by_quality(q: dict[str, float]) -> Call:
    """Noise-free judge: the better candidate wins in either order, equal quality ties."""

    def judge(a: str, b: str) -> Verdict:
        if q[a] == q[b]:
            return Verdict(a, b, "tie", None)
        return Verdict(a, b, "a", a) if q[a] > q[b] else Verdict(a, b, "b", b)

    return judge


def always_first(a: str, b: str) -> Verdict:
    return Verdict(a, b, "a", a)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 9, 16, 17, 32, 33])
def test_noise_free_judge_gives_the_exact_order_within_the_budget(n: int) -> None:
    rng = random.Random(n)
    for _ in range(5):
        ids = [f"c{i}" for i in range(n)]
        rng.shuffle(ids)
        q = {c: rng.random() for c in ids}
        r, _, asked = drive(ids, by_quality(q))
        assert r.candidate_ids == sorted(ids, key=lambda c: -q[c])
        assert r.ranks == list(range(1, n + 1))
        assert r.best_id == r.candidate_ids[0] and r.worst_id == r.candidate_ids[-1] and r.complete
        assert len(asked) <= 2 * n * math.ceil(math.log2(n))
        assert len(asked) <= 2 * sort_budget(n)
        assert r.scores == sorted(r.scores, reverse=True)  # type: ignore[type-var]
        assert len(r.stderr) == n and all(s is not None and s > 0 for s in r.stderr)


def test_budget_is_half_of_round_robin_from_16_on() -> None:
    for n in (16, 20, 32, 64):
        assert sort_budget(n) <= n * (n - 1) // 4
        assert sort_budget(n) <= n * math.ceil(math.log2(n))
    for n in range(2, 70):
        assert merge_sort_bound(n) <= sort_budget(n) <= n * (n - 1) // 2


def test_always_first_judge_makes_every_pair_inconsistent_and_nothing_exportable() -> None:
    ids = [f"c{i}" for i in range(8)]
    r, outcomes, asked = drive(ids, always_first)
    assert outcomes and all(o.inconsistent and o.tie for o in outcomes.values())
    assert r.best_id is None and r.worst_id is None
    assert set(r.ranks) == {1}
    assert len(asked) <= 2 * sort_budget(8)
    row = {"candidate_ids": r.candidate_ids, "ranks": r.ranks, "best_id": r.best_id, "worst_id": r.worst_id}
    for shape in ("best-worst", "best-vs-each", "all", "adjacent"):
        assert ranking_pairs(row, shape)[0] == []


def test_ties_share_a_rank() -> None:
    ids = [f"c{i}" for i in range(9)]
    q = dict(zip(ids, [3, 1, 2, 3, 1, 2, 0, 3, 2], strict=True))
    r, _, _ = drive(ids, by_quality(q))
    rank = dict(zip(r.candidate_ids, r.ranks, strict=True))
    assert {c for c in ids if rank[c] == 1} == {"c0", "c3", "c7"}
    assert {rank[c] for c in ids if q[c] == 2} == {4}
    assert {rank[c] for c in ids if q[c] == 1} == {7}
    assert rank["c6"] == 9
    assert r.best_id in ("c0", "c3", "c7") and r.worst_id == "c6"
    pairs, drops = ranking_pairs({"candidate_ids": r.candidate_ids, "ranks": r.ranks, "best_id": r.best_id,
                                  "worst_id": r.worst_id}, "all")  # fmt: skip
    assert all(q[a] > q[b] for a, b in pairs) and len(pairs) == 29 and drops["tie"] == 7


def test_all_ties_give_no_best_or_worst() -> None:
    ids = [f"c{i}" for i in range(6)]
    r, _, _ = drive(ids, by_quality(dict.fromkeys(ids, 1.0)))
    assert set(r.ranks) == {1} and r.best_id is None and r.worst_id is None and r.complete


def test_a_failure_leaves_the_ranking_incomplete_and_a_rerun_completes_it() -> None:
    ids = [f"c{i}" for i in range(8)]
    q = {c: float(i) for i, c in enumerate(ids)}
    good = by_quality(q)
    broken = {("c2", "c3"), ("c3", "c2")}

    def flaky(a: str, b: str) -> Verdict:
        return Verdict(a, b, "fail", None, error="timeout") if (a, b) in broken else good(a, b)

    cache: dict[tuple[str, str], Verdict] = {}
    first, _, asked1 = drive(ids, flaky, cache)
    assert not first.complete
    second, outcomes, asked2 = drive(ids, good, cache)  # the rerun: answered calls replay from the cache
    assert second.complete and second.candidate_ids == ids[::-1]
    assert set(asked2) & set(asked1) <= broken  # only the failed calls are asked again
    assert len(outcomes) <= sort_budget(8)  # the answer changed the path: new pairs, still within the budget


def test_same_outcomes_give_the_same_ranking() -> None:
    ids = [f"c{i}" for i in range(16)]
    rng = random.Random(7)
    verdict = {(a, b): rng.choice(["a", "b", "b", "tie"]) for a in ids for b in ids if a != b}

    def noisy(a: str, b: str) -> Verdict:
        v = verdict[(a, b)]
        return Verdict(a, b, v, a if v == "a" else b if v == "b" else None)  # type: ignore[arg-type]

    r1, o1, c1 = drive(ids, noisy)
    r2, o2, c2 = drive(ids, noisy)
    assert r1 == r2 and c1 == c2 and o1 == o2


def test_best_worst_and_every_cross_rank_pair_rest_on_a_strict_chain() -> None:
    rng = random.Random(3)
    for trial in range(20):
        ids = [f"c{i}" for i in range(12)]
        q = {c: rng.gauss(0, 1) for c in ids}
        noise = {(a, b): rng.random() for a in ids for b in ids}

        def judge(a: str, b: str, q: dict[str, float] = q, noise: dict[tuple[str, str], float] = noise) -> Verdict:
            p = 1 / (1 + math.exp(-((q[a] - q[b]) / 0.5 + 0.7)))  # noisy, position-biased
            u = noise[(a, b)]
            return Verdict(a, b, "a", a) if u < p - 0.1 else Verdict(a, b, "b", b) if u > p + 0.1 else Verdict(a, b, "tie", None)

        r, outcomes, asked = drive(ids, judge)
        assert len(asked) <= 2 * sort_budget(12)
        if r.best_id is not None:
            assert r.worst_id is not None and strictly_above(r.best_id, r.worst_id, outcomes)
        rank = dict(zip(r.candidate_ids, r.ranks, strict=True))
        for a in ids:
            for b in ids:
                if rank[a] < rank[b]:  # type: ignore[operator]
                    assert strictly_above(a, b, outcomes), (trial, a, b)


def test_fewer_than_two_candidates_ask_nothing() -> None:
    assert drive([], always_first)[2] == [] and drive(["x"], always_first)[0].ranks == [1]
