"""`prefdata rank --strategy sort` end to end: a scripted judge server on 127.0.0.1 (tests.helpers.QualityServer),
the real rank path (rounds across a group, the content-keyed cache, the template's verdict parsing), the sort
columns of the rankings, the default strategy for `--pairs`, and export's margin rule in standard errors."""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from prefdata.export import ExportConfig
from prefdata.rank import read_judgments, read_rankings
from prefdata.run.records import RANKING_SCHEMA, SORT_RANKING_SCHEMA
from prefdata.run.store import RunDir
from tests.helpers import QualityServer, cli, make_candidates_run
from tests.test_export_equivalence import _compare


def _texts(qs: list[float]) -> list[str]:
    return [f"answer q={q} number {i}" for i, q in enumerate(qs)]


def _qs(seed: int, sizes: list[int]) -> list[list[int]]:
    rng = random.Random(seed)
    return [rng.sample(range(100), n) for n in sizes]


def _q(text: str) -> float:
    return float(text.split("q=")[1].split()[0])


def _rank(capsys: pytest.CaptureFixture[str], run: RunDir, url: str, *extra: str):
    return cli(capsys, "rank", "--run", str(run.path), "--base-url", url, "--max-retries", "0", "--no-progress", *extra)


def _only_judge(run: RunDir) -> str:
    (jh,) = run.judge_hashes()
    return jh


def _quality_by_id(run: RunDir) -> dict[str, float]:
    c = run.read_candidates()
    assert c is not None
    return dict(zip(c["candidate_id"].to_list(), [_q(t) for t in c["text"].to_list()], strict=True))


@pytest.fixture
def exact():
    s = QualityServer()  # no noise, no bias: the higher quality wins in either order
    yield s
    s.close()


@pytest.fixture
def noisy():
    s = QualityServer(temp=20.0, bias=0.5, tie_band=0.2, seed=7)  # qualities 0..99: a noisy, biased judge
    yield s
    s.close()


def test_exact_judge_gives_the_exact_order_within_the_budget(tmp_path, capsys, exact):
    sizes = [16, 11, 5, 2]
    run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in _qs(0, sizes)])
    r = _rank(capsys, run, exact.url, "--pairs", "all")  # no --strategy: sort is the default for a full order
    assert r.code == 0, r.err
    jh = _only_judge(run)
    rec = run.read_meta()["stages"]["rank"][jh]
    assert rec["identity"]["strategy"] == "sort" and "--pairs all" in rec["strategy_chosen_by"]
    assert "with sort" in r.out
    q = _quality_by_id(run)
    rk = read_rankings(run, jh)
    assert list(rk.columns) == [*RANKING_SCHEMA, *SORT_RANKING_SCHEMA]
    for row in rk.iter_rows(named=True):
        n = row["n_candidates"]
        order = [q[c] for c in row["candidate_ids"]]
        assert order == sorted(order, reverse=True)
        assert row["ranks"] == list(range(1, n + 1))
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert row["comparisons"] <= 2 * n * math.ceil(math.log2(n))
        assert row["comparisons"] == 2 * row["pairs_compared"] and row["rounds"] >= math.ceil(math.log2(n))
        assert row["consistency"] == 1.0 and row["complete"] and row["failures"] == 0
        assert len(row["score_stderr"]) == n and all(se > 0 for se in row["score_stderr"])
    assert rk["comparisons"].sum() == read_judgments(run, jh).height == len(exact.requests)
    out = tmp_path / "x"
    e = cli(capsys, "export", "--run", str(run.path), "--pairs", "all", "--out", str(out), "--no-plot")
    assert e.code == 0, e.err
    df = pl.read_parquet(out / "data" / "*.parquet")
    assert df.height == sum(n * (n - 1) // 2 for n in sizes)
    assert all(_q(c[0]["content"]) > _q(rj[0]["content"]) for c, rj in zip(df["chosen"], df["rejected"], strict=True))


def test_always_first_judge_every_pair_inconsistent_nothing_exported(tmp_path, capsys):
    server = QualityServer(always_first=True)
    try:
        run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in _qs(1, [8, 5])])
        r = _rank(capsys, run, server.url, "--strategy", "sort")
        assert r.code == 0, r.err
        rk = read_rankings(run, _only_judge(run))
        for row in rk.iter_rows(named=True):
            assert row["inconsistent"] == row["pairs_compared"] > 0 and row["consistency"] == 0.0
            assert row["ranks"] == [1] * row["n_candidates"] and row["best_id"] is None and row["worst_id"] is None
        for pairs in ("all", "best-vs-each", "adjacent", "best-worst"):
            e = cli(capsys, "export", "--run", str(run.path), "--pairs", pairs, "--out", str(tmp_path / pairs))
            assert e.code != 0 and "nothing to export" in e.err, (pairs, e.err)
            assert not (tmp_path / pairs).exists()
    finally:
        server.close()


def test_ties_share_a_rank_and_are_never_exported(tmp_path, capsys, exact):
    texts = [_texts([5, 5, 3, 3, 1]), ["same q=4 text", "same q=4 text", "other q=2 text"]]
    run, _ = make_candidates_run(tmp_path / "r", texts)
    assert _rank(capsys, run, exact.url, "--strategy", "sort").code == 0
    jh = _only_judge(run)
    rk = read_rankings(run, jh)
    q = _quality_by_id(run)
    got = {tuple(q[c] for c in row["candidate_ids"]): row["ranks"] for row in rk.iter_rows(named=True)}
    assert got == {(5, 5, 3, 3, 1): [1, 1, 3, 3, 5], (4, 4, 2): [1, 1, 3]}
    judged = read_judgments(run, jh)
    assert judged.filter(pl.col("verdict") == "tie").height > 0  # equal qualities: the judge said [[C]]
    same = [r.split("q=4")[0] for r in exact.requests if r.count("same q=4 text") == 2]
    assert not same  # identical texts tie without a judge call
    out = tmp_path / "x"
    e = cli(capsys, "export", "--run", str(run.path), "--pairs", "all", "--out", str(out), "--no-plot")
    assert e.code == 0, e.err
    df = pl.read_parquet(out / "data" / "*.parquet")
    assert df.height == 2 * 2 + 2 * 1 + 2 * 1 + 2  # across the three tie groups, and (4, 2) twice
    assert all(_q(c[0]["content"]) > _q(rj[0]["content"]) for c, rj in zip(df["chosen"], df["rejected"], strict=True))


def _state(run: RunDir) -> tuple[pl.DataFrame, pl.DataFrame]:
    jh = _only_judge(run)
    j = read_judgments(run, jh).filter(pl.col("verdict") != "fail")
    j = j.select("prompt_id", "a_id", "b_id", "order", "verdict", "winner_id", "content_key")
    return j.sort("prompt_id", "a_id", "b_id"), read_rankings(run, jh).sort("prompt_id")


def test_failures_leave_rankings_incomplete_until_a_rerun_asks_only_what_is_missing(tmp_path, capsys):
    qs = _qs(2, [12, 9, 6])
    ref_server = QualityServer(temp=20.0, bias=0.5, tie_band=0.2, seed=3)
    server = QualityServer(temp=20.0, bias=0.5, tie_band=0.2, seed=3, fail_rate=0.25)
    try:
        ref, _ = make_candidates_run(tmp_path / "ref", [_texts(q) for q in qs])
        assert _rank(capsys, ref, ref_server.url, "--strategy", "sort").code == 0
        run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in qs])
        first = _rank(capsys, run, server.url, "--strategy", "sort")
        assert first.code == 3 and "run the same command again" in first.err
        rk = read_rankings(run, _only_judge(run))
        assert (rk["failures"] > 0).all() and not rk["complete"].any()
        answered = set(server.requests) - set(server.failed)
        server.healthy = True
        server.requests.clear()
        second = _rank(capsys, run, server.url, "--strategy", "sort")
        assert second.code == 0, second.err
        assert not set(server.requests) & answered  # nothing answered is asked again
        assert len(set(server.requests)) == len(server.requests)
        assert set(server.failed) & set(server.requests)  # the failed calls are asked again
        got_j, got_r = _state(run)
        want_j, want_r = _state(ref)
        assert got_r.equals(want_r)  # the same rankings as a run without failures
        # every call of the run without failures was answered alike (the first run also answered calls that the
        # replay no longer needs once a failed pair's verdict is known: they stay cached, unused)
        assert want_j.join(got_j, on=want_j.columns, how="anti", nulls_equal=True).height == 0
    finally:
        ref_server.close()
        server.close()


def _cmd(run: RunDir, url: str) -> list[str]:
    return [sys.executable, "-m", "prefdata.cli", "rank", "--run", str(run.path), "--base-url", url, "--strategy", "sort",
            "--max-retries", "0", "--concurrency", "2", "--batch-size", "6", "--no-progress"]  # fmt: skip


def test_killed_in_a_round_rerun_gives_the_uninterrupted_result(tmp_path):
    qs = _qs(4, [10, 8, 7, 5])
    server = QualityServer(temp=20.0, bias=0.5, tie_band=0.2, seed=5, delay_s=0.01)
    try:
        ref, _ = make_candidates_run(tmp_path / "ref", [_texts(q) for q in qs])
        p = subprocess.run(_cmd(ref, server.url), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in qs])
        shards = lambda: len(list(run.path.glob("judgments/*/shard-*.parquet")))  # noqa: E731
        for sig, after in ((signal.SIGTERM, 2), (signal.SIGKILL, 5)):
            proc = subprocess.Popen(_cmd(run, server.url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while shards() < after:
                assert proc.poll() is None and time.monotonic() < deadline, "rank ended before the kill"
                time.sleep(0.005)
            time.sleep(0.02)  # inside the next round: its calls are in flight
            proc.send_signal(sig)
            proc.wait(timeout=60)
            assert proc.returncode != 0
            assert all(read_rankings(run, h) is None for h in run.judge_hashes())  # they appear when a rank finishes
        done = subprocess.run(_cmd(run, server.url), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        got_j, got_r = _state(run)
        want_j, want_r = _state(ref)
        assert got_j.select("prompt_id", "a_id", "b_id").is_duplicated().sum() == 0  # no call answered twice
        assert got_j.equals(want_j) and got_r.equals(want_r)
    finally:
        server.close()


def test_group_size_one_and_4096_give_the_same_result(tmp_path, capsys, noisy):
    qs = _qs(5, [9, 6, 4])
    states = []
    for size, batch in (("1", "5"), ("4096", "64")):
        run, _ = make_candidates_run(tmp_path / size, [_texts(q) for q in qs])
        assert _rank(capsys, run, noisy.url, "--strategy", "sort", "--group-size", size, "--batch-size", batch).code == 0
        states.append(_state(run))
    (j1, r1), (j2, r2) = states
    assert j1.equals(j2) and r1.equals(r2)
    assert r1["inconsistent"].sum() > 0  # the judge was noisy enough to matter


def test_old_default_keeps_its_rankings_and_sort_gets_its_own(tmp_path, capsys, exact):
    run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in _qs(6, [6, 4])])
    assert _rank(capsys, run, exact.url).code == 0  # as before sort existed: iterative
    (old,) = run.judge_hashes()
    meta = run.read_meta()["stages"]["rank"][old]
    assert meta["identity"]["strategy"] == "iterative" and "best-worst" in meta["strategy_chosen_by"]
    files = {p: p.read_bytes() for p in (run.path / "rankings" / old).glob("*.parquet")}
    r = _rank(capsys, run, exact.url, "--pairs", "best-vs-each")
    assert r.code == 0
    new = next(h for h in run.judge_hashes() if h != old)
    lines = [ln for ln in r.err.splitlines() if f"rankings/{old}/" in ln]
    assert len(lines) == 1 and "strategy sort" in lines[0] and f"--judge {old}" in lines[0]
    assert {p: p.read_bytes() for p in (run.path / "rankings" / old).glob("*.parquet")} == files
    again = _rank(capsys, run, exact.url)  # the old command: the old judge hash, nothing asked
    assert again.code == 0 and "(0 new" in again.out and f"judge {old}" in again.out
    e = cli(capsys, "export", "--run", str(run.path), "--pairs", "best-vs-each", "--out", str(tmp_path / "x"))
    assert e.code != 0 and "several judges" in e.err
    e = cli(capsys, "export", "--run", str(run.path), "--judge", old, "--pairs", "best-vs-each", "--out", str(tmp_path / "x"))
    assert e.code != 0 and "rank with --pairs best-vs-each (sort" in e.err
    e = cli(capsys, "export", "--run", str(run.path), "--judge", new, "--pairs", "best-vs-each", "--out", str(tmp_path / "x"))
    assert e.code == 0, e.err


def test_other_strategies_write_the_old_columns(tmp_path, capsys, exact):
    run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in _qs(7, [5, 3])])
    assert _rank(capsys, run, exact.url, "--strategy", "round-robin").code == 0
    assert list(read_rankings(run, _only_judge(run)).columns) == list(RANKING_SCHEMA)


def test_min_margin_counts_standard_errors_on_sort_rankings(tmp_path, capsys, noisy):
    run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in _qs(8, [12, 10, 8, 12])])
    assert _rank(capsys, run, noisy.url, "--strategy", "sort").code == 0
    rk = read_rankings(run, _only_judge(run))
    se = {c: s for row in rk.iter_rows(named=True) for c, s in zip(row["candidate_ids"], row["score_stderr"], strict=True)}
    out = tmp_path / "x"
    e = cli(capsys, "export", "--run", str(run.path), "--pairs", "all", "--min-margin", "1", "--keep-inconsistent",
            "--out", str(out), "--no-plot")  # fmt: skip
    assert e.code == 0, e.err
    assert "below_margin" in e.out
    df = pl.read_parquet(out / "data" / "*.parquet")
    for c, r, m in df.select("chosen_id", "rejected_id", "margin").iter_rows():
        assert m >= math.sqrt(se[c] ** 2 + se[r] ** 2) > 0
    kept = 0  # the rule from the rankings alone: every pair across ranks whose gap is at least one se of the gap
    for row in rk.iter_rows(named=True):
        sc, rs, ids = row["scores"], row["ranks"], row["candidate_ids"]
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                kept += rs[i] < rs[j] and sc[i] - sc[j] >= math.sqrt(se[ids[i]] ** 2 + se[ids[j]] ** 2)
    assert 0 < df.height == kept
    # the polars tables and the per-pair reference rules (tests/pairs.py) agree, with and without the margin
    for m in (0.0, 0.5, 1.0, 2.0):
        cfg = ExportConfig(pairs="all", min_margin=m, out=str(tmp_path / f"eq{m}"), plot=False)
        _compare(run, cfg, tmp_path)


def test_ranking_shape_carries_the_standard_errors(tmp_path, capsys, noisy):
    run, _ = make_candidates_run(tmp_path / "r", [_texts(q) for q in _qs(9, [7, 5])])
    assert _rank(capsys, run, noisy.url, "--pairs", "ranking").code == 0  # the ranking shape's default: sort
    rk = read_rankings(run, _only_judge(run)).sort("prompt_id")
    out = tmp_path / "x"
    assert cli(capsys, "export", "--run", str(run.path), "--shape", "ranking", "--out", str(out), "--no-plot").code == 0
    df = pl.read_parquet(out / "data" / "*.parquet").sort("prompt_id")
    assert df.columns.index("score_stderrs") == df.columns.index("scores") + 1
    assert df["candidate_ids"].to_list() == rk["candidate_ids"].to_list()
    assert df["score_stderrs"].to_list() == rk["score_stderr"].to_list()
    _compare(run, ExportConfig(shape="ranking", out=str(tmp_path / "eq"), plot=False), tmp_path)


def test_rank_refuses_an_unknown_pairs_value(tmp_path, capsys, exact):
    run, _ = make_candidates_run(tmp_path / "r", [_texts([1, 2])])
    r = _rank(capsys, run, exact.url, "--pairs", "every")
    errors = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert r.code != 0 and len(errors) == 1 and "pairs must be one of" in errors[0], r.err
    assert not run.judge_hashes()


def test_bound_of_calls_covers_the_sort(tmp_path) -> None:
    from prefdata.rank.sort import sort_budget
    from prefdata.rank.strategies import STRATEGIES, comparison_bound

    assert set(STRATEGIES) == {"iterative", "round-robin", "sort"}
    for n in (2, 3, 8, 16, 32):
        assert comparison_bound("sort", n, "both") == 2 * sort_budget(n) <= 2 * n * math.ceil(math.log2(n))
        assert comparison_bound("sort", n, "fixed") == sort_budget(n)


def test_resolve_strategy_table() -> None:
    from prefdata.rank import RankConfig

    assert RankConfig().resolve_strategy(False)[0] == "iterative"
    assert RankConfig().resolve_strategy(True)[0] == "scores"
    for pairs in ("best-vs-each", "all", "adjacent", "ranking"):
        assert RankConfig(pairs=pairs).resolve_strategy(False)[0] == "sort"
        assert RankConfig(pairs=pairs).resolve_strategy(True)[0] == "scores"
    assert RankConfig(pairs="all", strategy="round-robin").resolve_strategy(False) == ("round-robin", "--strategy")
