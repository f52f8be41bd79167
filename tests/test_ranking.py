"""Ranking algorithms and the rank stage with oracle judges (no model needed)."""

from __future__ import annotations

import itertools
import random
import shutil
from pathlib import Path

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.judges.verdict import Candidate, PairRequest, Verdict
from prefdata.rank import RankConfig, rank_run, read_judgments, read_rankings
from prefdata.rank.ranking import (
    PairOutcome,
    aggregate_round_robin,
    bradley_terry,
    call_orders,
    combine,
    count_cycles,
    iterative,
    rank_by_scores,
    strictly_above,
)
from prefdata.run.store import RunDir
from tests.helpers import FirstJudge, OrderJudge, make_candidates_run, quality

RANKING_COLUMNS = [
    "prompt_id", "judge_hash", "strategy", "candidate_ids", "ranks", "scores", "best_id", "worst_id", "complete",
    "n_candidates", "comparisons", "ties", "failures", "inconsistent", "consistency", "margin", "too_long",
]


def _req(a: str, b: str) -> PairRequest:
    return PairRequest("p", (("user", "q"),), Candidate(a, "x"), Candidate(b, "y"))


def test_verdict_maps_slots_to_ids_in_both_orders():
    v1 = Verdict.from_slot(_req("c1", "c2"), "a")
    v2 = Verdict.from_slot(_req("c2", "c1"), "b")
    assert v1.winner_id == "c1" and v2.winner_id == "c1"
    assert Verdict.from_slot(_req("c1", "c2"), None).verdict == "fail"
    assert Verdict.from_slot(_req("c1", "c2"), "tie").winner_id is None


def test_combine_both_orders():
    agree = combine(("x", "y"), [Verdict("x", "y", "a", "x"), Verdict("y", "x", "b", "x")])
    assert agree.winner == "x" and not agree.inconsistent and agree.both_orders
    flip = combine(("x", "y"), [Verdict("x", "y", "a", "x"), Verdict("y", "x", "a", "y")])
    assert flip.tie and flip.inconsistent and flip.winner is None
    half = combine(("x", "y"), [Verdict("x", "y", "a", "x"), Verdict("y", "x", "tie", None)])
    assert half.tie and half.inconsistent
    failed = combine(("x", "y"), [Verdict("x", "y", "a", "x"), Verdict("y", "x", "fail", None, error="boom")])
    assert failed.fail and failed.winner is None


def test_call_orders_random_is_seeded_per_pair():
    a = [call_orders((f"x{i}", f"y{i}"), "random", 3, "p") for i in range(50)]
    b = [call_orders((f"x{i}", f"y{i}"), "random", 3, "p") for i in range(50)]
    assert a == b
    assert {o[0][0].startswith("x") for o in a} == {True, False}  # both orders occur
    assert call_orders(("x", "y"), "both", 0, "p") == [("x", "y"), ("y", "x")]
    assert call_orders(("x", "y"), "fixed", 0, "p") == [("x", "y")]


def _drive(gen, decide):
    """Run a strategy generator with a function pair -> PairOutcome; returns (ranking, pairs asked)."""
    asked = []
    try:
        need = next(gen)
        while True:
            asked.extend(need)
            need = gen.send({p: decide(p) for p in need})
    except StopIteration as stop:
        return stop.value, asked


def test_iterative_finds_best_and_worst_of_a_total_order_within_bound():
    rng = random.Random(0)
    for n in range(2, 13):
        for _ in range(5):
            q = list(range(n))
            rng.shuffle(q)
            ids = [f"c{i}" for i in range(n)]
            qual = dict(zip(ids, q, strict=True))

            def decide(p, qual=qual):
                x, y = p
                return PairOutcome(x, y, winner=x if qual[x] > qual[y] else y)

            r, asked = _drive(iterative(ids), decide)
            assert r.best_id == max(ids, key=qual.get)
            assert r.worst_id == min(ids, key=qual.get)
            assert len(asked) == len(set(asked)) <= 2 * (n - 1)
            assert r.ranks[0] == 1 and r.ranks[-1] == n


def test_iterative_all_ties_gives_no_best_or_worst():
    ids = ["a", "b", "c", "d"]
    r, _ = _drive(iterative(ids), lambda p: PairOutcome(p[0], p[1], tie=True))
    assert r.best_id is None and r.worst_id is None and all(x is None for x in r.ranks)


def test_iterative_tie_keeps_incumbent_and_checks_strict_chain():
    # a ties b, a beats c: best a (incumbent kept on the tie), worst c, a > c is strict
    out = {("a", "b"): PairOutcome("a", "b", tie=True), ("a", "c"): PairOutcome("a", "c", winner="a"),
           ("b", "c"): PairOutcome("b", "c", winner="b")}
    r, _ = _drive(iterative(["a", "b", "c"]), lambda p: out[p])
    assert (r.best_id, r.worst_id) == ("a", "c")
    assert not strictly_above("a", "b", out) and strictly_above("a", "c", out)


def test_round_robin_bt_and_cycles():
    ids = ["a", "b", "c"]
    cyc = {("a", "b"): PairOutcome("a", "b", winner="a"), ("b", "c"): PairOutcome("b", "c", winner="b"),
           ("a", "c"): PairOutcome("a", "c", winner="c")}
    assert count_cycles(ids, cyc) == 1
    r = aggregate_round_robin(ids, cyc)
    assert r.best_id is None and r.worst_id is None and r.ranks == [1, 1, 1]
    assert all(abs(v) < 1e-9 for v in bradley_terry(ids, cyc).values())  # a perfect cycle: equal strengths
    order = {("a", "b"): PairOutcome("a", "b", winner="a"), ("b", "c"): PairOutcome("b", "c", winner="b"),
             ("a", "c"): PairOutcome("a", "c", winner="a")}
    r = aggregate_round_robin(ids, order)
    assert r.candidate_ids == ["a", "b", "c"] and r.ranks == [1, 2, 3] and r.best_id == "a" and r.worst_id == "c"
    bt = bradley_terry(ids, order)
    assert bt["a"] > bt["b"] > bt["c"] and abs(sum(bt.values())) < 1e-9
    # MM fixed point: for each i, W_i = sum_j n_ij p_i / (p_i + p_j)
    import math

    p = {c: math.exp(v) for c, v in bt.items()}
    w = {"a": 2.1, "b": 1.1, "c": 0.1}  # wins + 0.1 prior pseudo-ties split over 2 opponents
    for i in ids:
        assert sum(1.1 * p[i] / (p[i] + p[j]) for j in ids if j != i) == pytest.approx(w[i], rel=1e-6)
    assert count_cycles(ids, order) == 0


def test_rank_by_scores_margin_and_ties():
    r = rank_by_scores(["a", "b", "c", "d"], {"a": 1.0, "b": 3.0, "c": 1.0, "d": None})
    assert r.candidate_ids == ["b", "a", "c", "d"] and r.ranks == [1, 2, 2, None]
    assert (r.best_id, r.worst_id) == ("b", "c") and not r.complete
    eq = rank_by_scores(["a", "b"], {"a": 2.0, "b": 2.0})
    assert eq.best_id is None and eq.worst_id is None and eq.ranks == [1, 1]
    m = rank_by_scores(["a", "b"], {"a": 2.0, "b": 1.9}, min_margin=0.2)
    assert m.best_id is None and m.ranks == [1, 1]


def _texts(qs: list[int]) -> list[str]:
    return [f"cand q={q} text {i}" for i, q in enumerate(qs)]


def test_first_judge_under_both_yields_no_preference(tmp_path):
    run, _ = make_candidates_run(tmp_path / "r", [_texts([3, 1, 4, 2]), _texts([5, 9, 2])])
    judge = FirstJudge()
    for strategy in ("iterative", "round-robin"):
        s = rank_run(run, RankConfig(strategy=strategy, progress=False), judge=judge)
        assert s["with_best_and_worst"] == 0 and s["consistency"] == 0.0
        df = read_rankings(run, s["judge_hash"])
        assert df["best_id"].null_count() == df.height and df["worst_id"].null_count() == df.height
        assert (df["inconsistent"] == df["ties"]).all() and (df["failures"] == 0).all()
        j = read_judgments(run, s["judge_hash"])
        assert set(j["verdict"].to_list()) == {"a"}  # the judge's raw answer is kept; the outcome is a tie


def test_order_judge_iterative_rank_run(tmp_path):
    qs = [[3, 1, 4, 2, 8, 6], [1, 2], [7], [2, 9, 5, 4, 0]]
    run, pids = make_candidates_run(tmp_path / "r", [_texts(q) for q in qs])
    judge = OrderJudge()
    s = rank_run(run, RankConfig(progress=False), judge=judge)
    df = read_rankings(run, s["judge_hash"])
    assert df.columns == RANKING_COLUMNS and df.height == len(qs)
    cands = run.read_candidates()
    text_of = dict(zip(cands["candidate_id"], cands["text"], strict=True))
    for pid, q in zip(pids, qs, strict=True):
        row = df.filter(pl.col("prompt_id") == pid).row(0, named=True)
        n = len(q)
        assert row["comparisons"] <= 2 * 2 * (n - 1)  # both orders: 2(N-1) per order
        if n == 1:
            assert row["best_id"] is None and row["comparisons"] == 0
            continue
        assert quality(text_of[row["best_id"]]) == max(q)
        assert quality(text_of[row["worst_id"]]) == min(q)
        assert row["consistency"] == 1.0 and row["inconsistent"] == 0
        assert row["candidate_ids"][0] == row["best_id"] and row["candidate_ids"][-1] == row["worst_id"]
    # a rerun asks nothing and rewrites one row per prompt
    before = len(judge.calls)
    s2 = rank_run(run, RankConfig(progress=False), judge=judge)
    assert len(judge.calls) == before and s2["judge_calls_new"] == 0 and s2["comparisons"] == s["comparisons"]
    assert read_rankings(run, s["judge_hash"]).height == len(qs)
    assert len(list(run.rankings_dir(s["judge_hash"]).glob("shard-*.parquet"))) == 1
    meta = run.read_meta()["stages"]["rank"][s["judge_hash"]]
    assert meta["judge_hash"] == s["judge_hash"] and meta["counts"]["prompts"] == len(qs)


def test_changed_judge_config_gets_new_hash_and_round_robin(tmp_path):
    run, _ = make_candidates_run(tmp_path / "r", [_texts([3, 1, 4, 2])])
    s1 = rank_run(run, RankConfig(progress=False), judge=OrderJudge())
    s2 = rank_run(run, RankConfig(progress=False, position_bias="fixed"), judge=OrderJudge())
    s3 = rank_run(run, RankConfig(progress=False, strategy="round-robin"), judge=OrderJudge())
    s4 = rank_run(run, RankConfig(progress=False, concurrency=3, batch_size=2), judge=OrderJudge())
    assert len({s1["judge_hash"], s2["judge_hash"], s3["judge_hash"]}) == 3
    assert s4["judge_hash"] == s1["judge_hash"] and s4["judge_calls_new"] == 0
    assert s3["comparisons"] == 2 * 6 and s2["comparisons"] <= 2 * 3
    rr = read_rankings(run, s3["judge_hash"]).row(0, named=True)
    assert rr["complete"] and rr["ranks"] == [1, 2, 3, 4] and rr["margin"] > 0


def test_identical_texts_tie_without_a_judge_call(tmp_path):
    run, _ = make_candidates_run(tmp_path / "r", [["same q=1", "same q=1"]])
    judge = OrderJudge()
    s = rank_run(run, RankConfig(progress=False), judge=judge)
    assert judge.calls == [] and s["ties"] == 1 and s["with_best_and_worst"] == 0


def test_noisy_judge_iterative_vs_round_robin_agree_often(tmp_path):
    rng = random.Random(1)
    qs = [rng.sample(range(100), 6) for _ in range(20)]
    run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in qs])
    a = read_rankings(run, rank_run(run, RankConfig(progress=False), judge=OrderJudge(0.05, 1))["judge_hash"])
    b = read_rankings(run, rank_run(run, RankConfig(progress=False, strategy="round-robin"), judge=OrderJudge(0.05, 1))["judge_hash"])
    j = a.join(b, on="prompt_id")
    agree = (j["best_id"] == j["best_id_right"]).sum()
    assert agree >= 12  # noisy, but mostly the same best


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(PrefdataError, match="not a prefdata run"):
        rank_run(RunDir(tmp_path / "nope"), RankConfig(), judge=OrderJudge())
    run, _ = make_candidates_run(tmp_path / "empty", [[]])
    with pytest.raises(PrefdataError, match="no candidates"):
        rank_run(run, RankConfig(), judge=OrderJudge())
    run, _ = make_candidates_run(tmp_path / "r", [_texts([1, 2])])
    with pytest.raises(PrefdataError, match="unknown judge"):
        rank_run(run, RankConfig(judge="no-such-template"))
    with pytest.raises(PrefdataError, match="reward-model"):
        rank_run(run, RankConfig(strategy="scores", progress=False), judge=OrderJudge())


def test_all_pairs_of_iterative_are_distinct_calls(tmp_path):
    run, _ = make_candidates_run(tmp_path / "r", [_texts([4, 3, 2, 1, 0])])
    judge = OrderJudge()
    rank_run(run, RankConfig(progress=False), judge=judge)
    assert len(judge.calls) == len(set(judge.calls))
    assert all(set(c) in [set(p) for p in itertools.combinations({x for c in judge.calls for x in c}, 2)] for c in judge.calls)


class InterruptingJudge(OrderJudge):
    """Answers `rounds` batches, then the user presses Ctrl-C in the middle of the next one."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds

    def judge(self, requests):
        if self.rounds == 0:
            raise KeyboardInterrupt
        self.rounds -= 1
        return super().judge(requests)


def test_ctrl_c_loses_at_most_the_batch_in_flight(tmp_path):
    rng = random.Random(3)
    qs = [rng.sample(range(50), 5) for _ in range(6)]
    run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in qs])
    cfg = RankConfig(batch_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        rank_run(run, cfg, judge=InterruptingJudge(rounds=3))
    ref = copy_inputs(run, tmp_path / "ref")
    full = rank_run(ref, cfg, judge=OrderJudge())
    kept = read_judgments(run, full["judge_hash"])
    assert kept.height == 3 * 4  # three finished rounds were saved, the fourth was lost
    resumed = OrderJudge()
    s = rank_run(run, cfg, judge=resumed)
    assert s["judge_calls_new"] == full["comparisons"] - kept.height == len(resumed.calls)
    a, b = read_rankings(run, s["judge_hash"]), read_rankings(ref, full["judge_hash"])
    assert a.sort("prompt_id")["best_id"].to_list() == b.sort("prompt_id")["best_id"].to_list()


def copy_inputs(run: RunDir, dest: Path) -> RunDir:
    """A fresh run with the same prompts and candidates (no judgments)."""
    shutil.copytree(run.path, dest, ignore=shutil.ignore_patterns("judgments", "rankings"))
    return RunDir(dest)


class ScoreByQuality:
    """A pointwise judge whose score is the hidden quality / 10 (stands in for a reward model's opinion)."""

    def config(self) -> dict[str, object]:
        return {"kind": "oracle-score"}

    def score(self, requests):
        from prefdata.judges.verdict import ScoreResult

        return [ScoreResult(r.candidate.id, quality(r.candidate.text) / 10, 3) for r in requests]


def test_min_margin_ties_are_transitive():
    r = rank_by_scores(["a", "b", "c"], {"a": 1.0, "b": 0.6, "c": 0.2}, min_margin=0.5)
    assert r.ranks == [1, 1, 1] and r.best_id is None  # 1.0~0.6 and 0.6~0.2 chain into one tie group
    r = rank_by_scores(["a", "b", "c", "d"], {"a": 1.0, "b": 0.8, "c": 0.2, "d": 0.1}, min_margin=0.3)
    assert r.ranks == [1, 1, 3, 3] and (r.best_id, r.worst_id) == ("a", "d")


def test_min_margin_no_exported_pair_within_the_margin(tmp_path):
    from prefdata.export import ExportConfig, export_run

    qs = [[10, 6, 2], [10, 4], [9, 8, 3, 2, 1]]  # scores q/10; margin 0.5
    run, pids = make_candidates_run(tmp_path / "r", [[f"ans q={q} #{i}" for i, q in enumerate(x)] for x in qs])
    s = rank_run(run, RankConfig(strategy="scores", min_margin=0.5, progress=False), judge=ScoreByQuality())
    df = read_rankings(run, s["judge_hash"])
    assert df.filter(pl.col("prompt_id") == pids[0])["ranks"].to_list() == [[1, 1, 1]]
    for pairs in ("adjacent", "all", "best-vs-each", "best-worst"):
        e = export_run(run, ExportConfig(pairs=pairs, out=str(tmp_path / pairs)))
        rows = pl.read_parquet(tmp_path / pairs / "data")
        assert e.n_rows == rows.height > 0
        gaps = (rows["chosen_score"] - rows["rejected_score"]).to_list()
        assert min(gaps) > 0.5 + 1e-9, (pairs, gaps)
        assert pids[0] not in set(rows["prompt_id"])
