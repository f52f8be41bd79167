"""Pair selection rules on single ranking rows: strategies, ties, and every per-pair filter."""

from __future__ import annotations

import pytest

from tests.pairs import RankedCandidate, direct_verdicts, pair_drop_reason, ranking_pairs


def _rk(ranks: list[int | None], best: str | None = "a", worst: str | None = None) -> dict:
    ids = [chr(ord("a") + i) for i in range(len(ranks))]
    return {"candidate_ids": ids, "ranks": ranks, "best_id": best, "worst_id": worst or ids[-1]}


def test_best_worst_one_pair_and_no_preference():
    assert ranking_pairs(_rk([1, 2, 3]), "best-worst") == ([("a", "c")], {})
    pairs, drops = ranking_pairs(_rk([1, 1, 1], best=None, worst=None), "best-worst")
    assert pairs == [] and drops == {"no_preference": 1}
    # iterative rankings (unknown middle) still give best vs worst
    assert ranking_pairs(_rk([1, None, 3]), "best-worst")[0] == [("a", "c")]


def test_best_vs_each_skips_ties_with_best():
    pairs, drops = ranking_pairs(_rk([1, 1, 2, 3]), "best-vs-each")
    assert pairs == [("a", "c"), ("a", "d")] and drops == {"tie": 1}


def test_all_ordered_pairs_skip_tie_groups():
    pairs, drops = ranking_pairs(_rk([1, 2, 2, 3]), "all")
    assert set(pairs) == {("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")}
    assert drops == {"tie": 1}
    assert all(c != r for c, r in pairs)


def test_adjacent_follows_rank_order():
    # candidate_ids need not be sorted: ranks decide
    rk = {"candidate_ids": ["x", "y", "z"], "ranks": [2, 1, 3], "best_id": "y", "worst_id": "z"}
    assert ranking_pairs(rk, "adjacent")[0] == [("y", "x"), ("x", "z")]
    pairs, drops = ranking_pairs(_rk([1, 2, 2, 3]), "adjacent")
    assert pairs == [("a", "b"), ("c", "d")] and drops == {"tie": 1}


def test_full_order_strategies_refuse_unknown_ranks():
    with pytest.raises(ValueError):
        ranking_pairs(_rk([1, None, 3]), "all")
    with pytest.raises(ValueError):
        ranking_pairs(_rk([1, 2]), "nope")


def _c(cid: str, text: str, finish: str = "stop", score: float | None = None) -> RankedCandidate:
    return RankedCandidate(candidate_id=cid, text=text, finish_reason=finish, score=score)


def test_filters_each_reason():
    good, bad = _c("a", "good", score=2.0), _c("b", "bad", score=1.5)
    assert pair_drop_reason(good, bad) is None
    assert pair_drop_reason(good, _c("b", "bad", "length")) == "truncated"
    assert pair_drop_reason(good, _c("b", "bad", "length"), keep_truncated=True) is None
    assert pair_drop_reason(good, _c("b", " good\n")) == "identical_text"
    assert pair_drop_reason(good, _c("b", " good\n"), keep_truncated=True, keep_inconsistent=True) == "identical_text"
    assert pair_drop_reason(good, bad, min_margin=1.0) == "below_margin"
    assert pair_drop_reason(good, bad, min_margin=0.5) is None
    assert pair_drop_reason(_c("a", "x"), _c("b", "y"), min_margin=0.1) == "margin_unknown"
    assert pair_drop_reason(good, bad, verdicts=["a", "a"]) is None
    assert pair_drop_reason(good, bad, verdicts=["a", "b"]) == "inconsistent"
    assert pair_drop_reason(good, bad, verdicts=["a", None]) == "inconsistent"
    assert pair_drop_reason(good, bad, verdicts=["a", "b"], keep_inconsistent=True) is None


def test_direct_verdicts_group_unordered_pairs_and_skip_failures():
    rows = [
        {"prompt_id": "p", "a_id": "x", "b_id": "y", "verdict": "a", "winner_id": "x"},
        {"prompt_id": "p", "a_id": "y", "b_id": "x", "verdict": "b", "winner_id": "x"},
        {"prompt_id": "p", "a_id": "y", "b_id": "x", "verdict": "tie", "winner_id": None},
        {"prompt_id": "p", "a_id": "y", "b_id": "x", "verdict": "fail", "winner_id": None},
        {"prompt_id": "p", "a_id": "y", "b_id": None, "verdict": "a", "winner_id": "y"},
    ]
    assert direct_verdicts(rows) == {("p", frozenset({"x", "y"})): ["x", "x", None]}
