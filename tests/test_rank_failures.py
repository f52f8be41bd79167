"""Failed judge calls never reach an export: rank exits 3 and says how to retry, export skips those prompts,
a dead endpoint stops the run early, and a round robin with a failed pair is not complete."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import polars as pl
import pytest

from prefdata.export import ExportConfig, export_run
from prefdata.judges.build import build_judge
from prefdata.judges.verdict import PairRequest, Verdict
from prefdata.rank import EXIT_FAILURES, JudgeUnreachable, RankConfig, rank_run, read_judgments, read_rankings
from tests.helpers import FaultServer, completion, make_candidates_run, quality, quality_texts


class FailPairJudge:
    """Prefers the higher hidden quality, but every call between the two named qualities fails."""

    def __init__(self, fail: tuple[int, int]) -> None:
        self.fail = set(fail)

    def config(self) -> dict[str, object]:
        return {"kind": "oracle-fail-pair", "fail": sorted(self.fail)}

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        out = []
        for r in requests:
            qa, qb = quality(r.first.text), quality(r.second.text)
            if {qa, qb} == self.fail:
                out.append(Verdict.from_slot(r, None, error="HTTP 503: down"))
            else:
                out.append(Verdict.from_slot(r, "a" if qa > qb else "b" if qb > qa else "tie"))
        return out


def test_round_robin_with_a_failed_pair_is_incomplete_and_never_exported(tmp_path):
    # prompt 0: qualities 3, 2, 1 with (2, 1) never judged; prompt 1 is clean
    run, pids = make_candidates_run(tmp_path / "r", [["a q=3", "b q=2", "c q=1"], ["d q=5", "e q=4", "f q=6"]])
    judge = FailPairJudge((2, 1))
    s = rank_run(run, RankConfig(strategy="round-robin", position_bias="fixed", progress=False), judge=judge)
    assert s["failed_calls"] == 1 and s["prompts_not_final"] == 1
    df = read_rankings(run, s["judge_hash"])
    bad = df.filter(pl.col("prompt_id") == pids[0]).row(0, named=True)
    assert not bad["complete"] and bad["failures"] == 1
    for pairs in ("all", "adjacent", "best-vs-each", "best-worst"):
        e = export_run(run, ExportConfig(pairs=pairs, out=str(tmp_path / pairs)))
        assert e.drops.get("judge_failed") == 1, pairs
        rows = pl.read_parquet(tmp_path / pairs / "data")
        assert set(rows["prompt_id"]) == {pids[1]}, pairs  # nothing from the prompt with the unjudged pair
        assert any("rerun" in w or "again" in w for w in e.warnings)
    card = (tmp_path / "all" / "README.md").read_text()
    assert "judge_failed" in card


def test_cli_exit_3_prints_rerun_and_export_skips_until_retried(tmp_path):
    server = FaultServer()  # unhealthy: some requests answer 503 every time, others fail once
    try:
        qs = [[3, 1, 4, 2], [5, 9, 2], [1, 6, 3, 8, 2], [7, 2], [4, 8, 1], [2, 5], [6, 3], [9, 1, 5]]
        run, pids = make_candidates_run(tmp_path / "r", [quality_texts(q) for q in qs])
        cmd = [sys.executable, "-m", "prefdata.cli", "rank", "--run", str(run.path), "--base-url", server.url,
               "--max-retries", "1", "--position-bias", "fixed", "--no-progress"]
        env = dict(os.environ)

        def export(out: str) -> None:  # rank only ranks (issue 11.4); the export is its own command
            e = subprocess.run([sys.executable, "-m", "prefdata.cli", "export", "--run", str(run.path), "--out", out],
                               capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
            assert e.returncode == 0, e.stderr

        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        export(str(tmp_path / "e1"))
        assert p.returncode == EXIT_FAILURES, p.stderr
        assert "run the same command again" in p.stderr and "prefdata rank --run" in p.stderr
        assert "Traceback" not in p.stderr
        jh = next(iter(run.read_meta()["stages"]["rank"]))
        df = read_rankings(run, jh)
        not_final = set(df.filter(pl.col("failures") > 0)["prompt_id"])
        assert not_final and len(not_final) < len(pids)
        rows = pl.read_parquet(tmp_path / "e1" / "data")
        assert not (set(rows["prompt_id"]) & not_final)
        assert "judge_failed" in (tmp_path / "e1" / "README.md").read_text()
        # fixed server: the same command retries only the failed calls, exits 0, and every prompt is exported
        server.healthy = True
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        export(str(tmp_path / "e2"))
        assert p.returncode == 0, p.stderr
        rows = pl.read_parquet(tmp_path / "e2" / "data")
        assert set(rows["prompt_id"]) == set(pids)
        cands = run.read_candidates()
        text_of = dict(zip(cands["candidate_id"], cands["text"], strict=True))
        for r in rows.iter_rows(named=True):
            q = qs[pids.index(r["prompt_id"])]
            assert quality(text_of[r["chosen_id"]]) == max(q) and quality(text_of[r["rejected_id"]]) == min(q)
    finally:
        server.close()


def test_unreachable_endpoint_stops_early_and_rerun_finishes(tmp_path):
    server = FaultServer()
    server.healthy = True
    qs = [[3, 1, 4, 2], [5, 9, 2], [1, 6, 3, 8, 2], [7, 2, 5]]
    run, _ = make_candidates_run(tmp_path / "r", [quality_texts(q) for q in qs])
    cfg = RankConfig(base_url=[server.url], max_retries=4, backoff_s=0.5, concurrency=2, batch_size=4, progress=False,
                     unreachable_after=4)
    judge = build_judge(cfg)  # the server answered /models, then goes away
    server.close()
    t0 = time.monotonic()
    with pytest.raises(JudgeUnreachable, match="stopped early: the judge server .* refused 4 connections in a row") as e:
        rank_run(run, cfg, judge=judge)
    assert time.monotonic() - t0 < 5.0  # without the stop: 4 retries with backoff per call, for every call
    assert e.value.exit_code == EXIT_FAILURES
    jh = judge_hash = next(iter(read_judgments_dirs(run)))
    j = read_judgments(run, judge_hash)
    # the rounds in flight, recorded as failures: two at once (1 + concurrency 2 / batch 4, see pairwise._depth)
    assert j.height == 8 and (j["verdict"] == "fail").all()
    # the server is back (on another port): a rerun finishes, every failed call asked again
    server2 = FaultServer()
    server2.healthy = True
    try:
        cfg2 = RankConfig(base_url=[server2.url], progress=False)
        s = rank_run(run, cfg2)
        assert s["judge_hash"] == jh and s["failed_calls"] == 0 and s["prompts_not_final"] == 0
    finally:
        server2.close()


def read_judgments_dirs(run) -> list[str]:
    return sorted(p.name for p in (run.path / "judgments").iterdir())


def test_summary_names_failed_pairs_and_failed_calls(tmp_path):
    """Before: "1 failures" in the summary and "2 judge calls failed" on the next line, for the same run."""
    run, _ = make_candidates_run(tmp_path / "r", [["a q=3", "b q=2", "c q=1"]])
    s = rank_run(run, RankConfig(strategy="round-robin", position_bias="both", progress=False), judge=FailPairJudge((2, 1)))
    assert s["failures"] == 1 and s["failed_calls"] == 2
    assert "1 pairs without a verdict (2 failed judge calls)" in s.lines()[0]
    assert s.problems("prefdata rank ...")[0].startswith("2 judge calls failed")


class HugeServer(FaultServer):
    """Answers every judge call with a verdict followed by 3 MB of text."""

    def answer(self, body: dict) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append("chat")
        return 200, completion("[[A]] " + "blah " * 600_000)


def test_oversized_judge_replies_are_failures_with_their_reason_and_not_kept(tmp_path):
    """Before: 3 MB replies were recorded as verdicts, raw text and all (the judgments folder reached 99 MB)."""
    server = HugeServer()
    try:
        run, _ = make_candidates_run(tmp_path / "r", [quality_texts([3, 1, 2])])
        s = rank_run(run, RankConfig(base_url=[server.url], max_retries=3, backoff_s=0.0, position_bias="fixed",
                                     strategy="round-robin", progress=False))  # fmt: skip
    finally:
        server.close()
    j = read_judgments(run, s["judge_hash"])
    assert j.height == 3 and (j["verdict"] == "fail").all() and (j["attempts"] == 1).all()
    assert j["error"].str.starts_with("too_large: the reply").all() and (j["raw"] == "").all()
    assert len(server.requests) == 3  # not asked again: the same request gets the same reply
    assert sum(p.stat().st_size for p in (run.path / "judgments").rglob("*")) < 100_000
