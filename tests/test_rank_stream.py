"""`rank` reads the run in groups of prompts: any group size gives the result of one group, a crash in a later
group keeps the earlier groups' judgments for the rerun, and the fast content keys equal `content_key`."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import polars as pl
import pytest

from prefdata.judges.verdict import Candidate, PairRequest, ScoreRequest, ScoreResult, Verdict
from prefdata.rank import RankConfig, rank_run
from prefdata.rank.output import ContentKeys
from prefdata.run.groups import Prompt
from prefdata.run.records import content_key
from prefdata.run.store import RunDir
from tests.helpers import OrderJudge, candidate_row, prompt_row, quality, write_inputs


class SeededOrderJudge(OrderJudge):
    """OrderJudge whose noise depends on the call, not on the order calls arrive in (groups change that order)."""

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        out = []
        for r, v in zip(requests, super().judge(requests), strict=True):
            flip = hashlib.sha256((r.first.id + r.second.id).encode()).digest()[0] < 60 and v.verdict in ("a", "b")
            fail = (quality(r.first.text) + quality(r.second.text)) % 7 == 0
            out.append(Verdict(r.first.id, r.second.id, "fail", None, error="too_long: x") if fail
                       else Verdict.from_slot(r, "b" if v.verdict == "a" else "a") if flip else v)  # fmt: skip
        return out


class ScoreByQuality:
    def config(self) -> dict[str, object]:
        return {"kind": "score-by-quality"}

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return [ScoreResult(r.candidate.id, None if quality(r.candidate.text) == 13 else quality(r.candidate.text) / 10, 3,
                            quality(r.candidate.text) % 4 == 0, "boom" if quality(r.candidate.text) == 13 else None)
                for r in requests]  # fmt: skip


class DiesOnCall:
    """Wraps a judge; the n-th judge call raises (a crash in the middle of the run)."""

    def __init__(self, inner: object, n: int):
        self.inner, self.n, self.calls = inner, n, 0

    def config(self) -> dict[str, object]:
        return self.inner.config()  # type: ignore[attr-defined]

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("killed")

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        self._tick()
        return self.inner.judge(requests)  # type: ignore[attr-defined]


def build_run(path: Path, seed: int = 7) -> RunDir:
    """23 prompts (every fifth without candidates, a third with a reference), 1-6 candidates each with repeated
    texts and two kinds, spread over two candidate shards."""
    rng = random.Random(seed)
    run = RunDir(path)
    run.record_stage("generate", "t", {"note": "built by the test"})
    prows, shards = [], [[], []]
    for p in range(23):
        msgs = [{"role": "system", "content": 'Be "brief" ü'}, {"role": "user", "content": f"Q{p} ✓\n"}]
        prows.append(prompt_row(msgs, reference=None if p % 3 else f"ref {p}"))
        if p % 5 == 4:
            continue
        for i in range(rng.randint(1, 6)):
            text = f"ans q={rng.randint(0, 14)} {'same' if rng.random() < 0.3 else i} ✓ \"x\"\n"
            shards[p % 2].append(candidate_row(prows[-1]["prompt_id"], "s", i, text, kind="greedy" if i == 0 and p % 2 else "sample"))
    write_inputs(run, prows, shards[0])
    run.write_shard(run.candidates_dir, pl.DataFrame(shards[1]))
    return run


def outcome(run: RunDir, summary: dict) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    s = {k: v for k, v in summary.items() if k not in ("elapsed_s", "calls_per_s")}
    jh = summary["judge_hash"]
    assert len(list(run.rankings_dir(jh).glob("*.parquet"))) == 1
    assert not run.ranking_parts_dir(jh).exists()
    judgments = run.read_judgments(jh).drop("created", "latency_s").sort(["prompt_id", "a_id", "b_id"], nulls_last=True)  # type: ignore[union-attr]
    return s, run.read_rankings(jh), judgments  # type: ignore[return-value]


@pytest.mark.parametrize("kw", [
    {"strategy": "iterative", "position_bias": "both", "batch_size": 5},
    {"strategy": "iterative", "position_bias": "random", "batch_size": 3, "kinds": ["sample"]},
    {"strategy": "round-robin", "position_bias": "fixed", "batch_size": 7},
    {"strategy": "scores", "min_margin": 0.15, "batch_size": 4, "rm_batch_size": 2},
])  # fmt: skip
def test_any_group_size_gives_the_result_of_one_group(tmp_path, kw):
    make = ScoreByQuality if kw["strategy"] == "scores" else SeededOrderJudge
    results = []
    for size in (4096, 1, 3):
        run = build_run(tmp_path / f"g{size}")
        results.append(outcome(run, rank_run(run, RankConfig(group_size=size, progress=False, **kw), judge=make())))
    (s0, rk0, jd0), *rest = results
    assert s0["prompts"] > 10 and s0["judge_calls_new"] > 20
    for s, rk, jd in rest:
        assert s == s0
        assert rk.equals(rk0)
        assert jd.equals(jd0)


def test_a_crash_in_a_later_group_keeps_the_earlier_judgments(tmp_path):
    run = build_run(tmp_path / "r")
    cfg = RankConfig(group_size=4, batch_size=4, progress=False)
    with pytest.raises(RuntimeError, match="killed"):
        rank_run(run, cfg, judge=DiesOnCall(OrderJudge(), 12))
    jh = next(p.name for p in (run.path / "judgments").iterdir())
    asked = run.read_judgments(jh).height  # type: ignore[union-attr]
    assert asked > 4 * 4  # groups after the first one were started
    assert run.read_rankings(jh) is None and not run.ranking_parts_dir(jh).exists()
    s = rank_run(run, cfg, judge=OrderJudge())
    assert s["judge_calls_cached"] == asked
    fresh = build_run(tmp_path / "fresh")
    s_fresh = rank_run(fresh, cfg, judge=OrderJudge())
    assert s["judge_calls_new"] + asked == s_fresh["judge_calls_new"]
    assert run.read_rankings(jh).equals(fresh.read_rankings(jh))  # type: ignore[union-attr]


@pytest.mark.parametrize("reference", [None, "the ref", 'quote " ✓'])
def test_fast_content_keys_equal_content_key(reference):
    msgs = (("system", 'Be "brief"\n'), ("user", "ünïcode ✓ \\ \t end"))
    texts = {"a": 'He said "hi"\n\\n', "b": "", "c": "日本語 🙂 \u2028"}
    p = Prompt("pid", msgs, reference, [Candidate(k, v) for k, v in texts.items()])
    keys = ContentKeys("judgehash", p)
    for a in texts:
        assert keys.score(a) == content_key("judgehash", msgs, reference, texts[a], None)
        for b in texts:
            assert keys.pair(a, b) == content_key("judgehash", [{"role": r, "content": c} for r, c in msgs], reference,
                                                  texts[a], texts[b])  # fmt: skip
