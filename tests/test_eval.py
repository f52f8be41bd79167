"""`prefdata eval`: real sampling (transformers backend, tiny Llama) with a verifier, the scripted pairwise judge
server with a hand-computed win rate, and the length-controlled estimate on synthetic data."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.eval.run import EvalConfig, Sides, eval_judge, eval_run, finish, table_rows
from prefdata.eval.stats import length_controlled_win_rate, wilson
from prefdata.run.store import RunDir
from tests.helpers import FaultServer, build_tiny_llama, candidate_row, make_pair_run, prompt_row, write_inputs


def _wilson_by_hand(p: float, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_wilson_matches_the_formula():
    assert wilson(0.6, 5) == pytest.approx(_wilson_by_hand(0.6, 5))
    lo, hi = wilson(0.0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)  # the textbook value for 0/10


@pytest.fixture
def arith_file(tmp_path):
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b), "gold": f"The answer is {a + b}."}
            for a, b in [(12, 30), (45, 11), (20, 22), (31, 17), (60, 9), (14, 14)]]
    rows.append({"prompt": "Say something nice.", "answer": "", "gold": "Something nice."})  # no reference
    f = tmp_path / "eval.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_eval_with_verifier_real_sampling_column_baseline_and_resume(tmp_path, tiny_llama_dir, arith_file):
    cfg = EvalConfig(model=str(tiny_llama_dir), baseline="gold", prompts=str(arith_file), judge="verify:number",
                     reference_field="answer", backend="hf", max_tokens=6)
    run = RunDir(tmp_path / "ev")
    s = eval_run(run, cfg, progress=False)
    # the baseline column holds the right answers: accuracy 6/6; the random tiny model gets none right
    assert s["judge_kind"] == "verifier" and s["prompts"] == 7 and s["prompts_without_reference"] == 1
    assert s["baseline_accuracy"] == 1.0 and s["baseline_scored"] == 6
    assert (s["baseline_accuracy_low"], s["baseline_accuracy_high"]) == pytest.approx(_wilson_by_hand(1.0, 6))
    assert s["accuracy"] == 0.0 and (s["accuracy_low"], s["accuracy_high"]) == pytest.approx(_wilson_by_hand(0.0, 6))
    assert s["compared"] == 6 and s["win_rate"] == 0.0 and s["losses"] == 6
    assert s["length_unit"] == "tokens" and s["len_mean"] <= 6 and s["baseline_len_mean"] > 0
    # lost every prompt: the LC fit does not exist, and the report says so next to the raw rate (not [0, 1])
    assert s.get("lc_win_rate") is None and s["lc_no_fit"] == "no finite fit: the model lost every prompt"
    assert json.loads((run.path / "eval.json").read_text())["accuracy"] == 0.0
    md = (run.path / "eval.md").read_text()
    assert "| no finite fit: the model lost every prompt; raw win rate 0.000 [0.000, " in md
    assert "| accuracy (95% CI) | 0.000 [0.000, " in md and "| 1.000 [" in md and "| mean score (95% CI) |" in md
    cands = run.read_candidates()
    assert cands.filter(pl.col("kind") == "sample").height == 7 + 7  # one answer per side and prompt
    # rerun: nothing sampled or judged again, the same report
    s2 = eval_run(run, cfg, progress=False)
    assert run.read_candidates().height == cands.height and s2 == s
    meta = run.read_meta()
    assert meta["stages"]["rank"][s["judge_hash"]]["counts"]["judge_calls_new"] == 0


def test_eval_model_against_model_and_errors(tmp_path, tiny_llama_dir, demo_model_dir, arith_file):
    other = build_tiny_llama(tmp_path / "other", demo_model_dir, seed=3)
    cfg = EvalConfig(model=str(tiny_llama_dir), baseline=str(other), prompts=str(arith_file), judge="verify:number",
                     reference_field="answer", backend="hf", max_tokens=4, limit=3)
    s = eval_run(RunDir(tmp_path / "ev"), cfg, progress=False)
    assert s["model_sampler"] != s["baseline_sampler"] and s["prompts"] == 3
    assert s["accuracy"] == s["baseline_accuracy"] == 0.0 and s["win_rate"] == 0.5 and s["ties"] == 3
    same = EvalConfig(model=str(tiny_llama_dir), baseline=str(tiny_llama_dir), prompts=str(arith_file),
                      judge="verify:number", reference_field="answer", backend="hf", max_tokens=4)
    with pytest.raises(PrefdataError, match="same model"):
        eval_run(RunDir(tmp_path / "ev2"), same, progress=False)
    bad = EvalConfig(model=str(tiny_llama_dir), baseline="nocolumn", prompts=str(arith_file), judge="verify:number")
    with pytest.raises(PrefdataError, match="neither a model folder nor a column"):
        eval_run(RunDir(tmp_path / "ev3"), bad, progress=False)


def test_eval_pairwise_scripted_judge_hand_computed(tmp_path, monkeypatch):
    server = FaultServer()
    server.healthy = True  # judges by the hidden quality q=N in each answer, consistently in both orders
    try:
        pairs = [
            ("answer q=5 with a few more words here", "answer q=2"),  # model wins both orders
            ("answer q=7 and more", "answer q=1"),  # model wins both orders
            ("answer q=3", "answer q=3 too"),  # tie both orders ([[C]])
            ("answer q=1", "answer q=9 but longer"),  # model loses both orders
            ("same q=4", "same q=4"),  # identical text: a tie without a call
        ]
        run, sides = make_pair_run(tmp_path / "ev", pairs), Sides("mhash", "bhash", "model", "baseline")
        prompts = tmp_path / "p.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Task number {i}"}) + "\n" for i in range(len(pairs))))
        cfg = EvalConfig(model="m", baseline="b", prompts=str(prompts), judge="verdict-only", base_url=[server.url],
                         rank={"backoff_s": 0.01})
        rs = eval_judge(run, cfg, progress=False)
        s = finish(run, cfg, sides, rs)
        assert s["judge_kind"] == "pairwise" and s["compared"] == 5
        assert (s["wins"], s["ties"], s["losses"]) == (4, 4, 2) and s["judge_calls"] == 8
        assert s["identical_answers"] == 1 and len(server.requests) == 8  # both orders of 4 prompts
        assert s["win_rate"] == pytest.approx(3 / 5)  # per prompt 1, 1, ½, 0, ½
        assert (s["win_rate_low"], s["win_rate_high"]) == pytest.approx(_wilson_by_hand(0.6, 5))
        assert s["len_mean"] == pytest.approx((8 + 4 + 2 + 2 + 2) / 5) and s["baseline_len_mean"] == pytest.approx((2 + 2 + 3 + 4 + 2) / 5)
        # a rerun asks the judge nothing again
        server.requests.clear()
        s2 = finish(run, cfg, sides, eval_judge(run, cfg, progress=False))
        assert server.requests == [] and s2["win_rate"] == s["win_rate"]
    finally:
        server.close()


def test_eval_verifier_with_scores_beyond_0_1_reports_mean_scores_for_both_sides(tmp_path):
    """A 0/1/2 verifier: accuracy is decided for both sides together (none here), and mean scores are always shown."""
    judge_py = tmp_path / "mod3.py"
    judge_py.write_text("def score(messages, completion, reference):\n    return float(len(completion) % 3)\n")
    # model: every answer scores 1 (all 0/1 alone); baseline: 2, 2, 0, 1, 1 -> mean 1.2, better than the model
    pairs = [("a", "ab"), ("abcd", "xy"), ("q", "abc"), ("zzzz", "k"), ("m", "abcd")]
    run = RunDir(tmp_path / "ev")
    run.record_stage("generate", "m", {"note": "built by the test"})
    prows = [prompt_row(f"Task number {i}", reference="ref") for i in range(len(pairs))]
    crows = [candidate_row(p["prompt_id"], shash, 0, text, model=shash)
             for p, (mt, bt) in zip(prows, pairs, strict=True) for shash, text in (("mhash", mt), ("bhash", bt))]
    write_inputs(run, prows, crows)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Task number {i}"}) + "\n" for i in range(len(pairs))))
    cfg = EvalConfig(model="m", baseline="b", prompts=str(prompts), judge=f"python:{judge_py}:score")
    s = finish(run, cfg, Sides("mhash", "bhash", "model", "baseline"), eval_judge(run, cfg, progress=False))
    assert s["judge_kind"] == "verifier" and s["scored"] == s["baseline_scored"] == 5
    assert s.get("accuracy") is None and s.get("baseline_accuracy") is None
    assert s["mean_score"] == pytest.approx(1.0) and s["baseline_mean_score"] == pytest.approx(1.2)
    md = (run.path / "eval.md").read_text()
    assert "accuracy" not in md and "| mean score (95% CI) | 1.000 [" in md and "| 1.200 [" in md


def test_length_controlled_win_rate_when_length_alone_decides():
    rng = np.random.default_rng(0)
    n = 400
    # the model is longer on 80% of prompts, and the judge's preference depends on length only
    d = np.where(rng.random(n) < 0.8, rng.integers(1, 80, n), -rng.integers(1, 80, n)).astype(float)
    y = (rng.random(n) < 1 / (1 + np.exp(-4 * np.tanh(d / d.std())))).astype(float)
    fit = length_controlled_win_rate(list(y), list(d))
    assert y.mean() > 0.7  # the raw win rate rewards length
    assert fit.low < 0.5 < fit.high and abs(fit.lc_win_rate - 0.5) < 0.08
    # when length does not matter, the length-controlled rate stays at the raw one
    y2 = (rng.random(n) < 0.7).astype(float)
    fit2 = length_controlled_win_rate(list(y2), list(d))
    assert fit2.lc_win_rate == pytest.approx(y2.mean(), abs=0.04)
    # no length variation: the intercept alone, the raw win rate
    fit3 = length_controlled_win_rate([1.0, 0.5, 0.5, 1.0], [3.0, 3.0, 3.0, 3.0])
    assert fit3.lc_win_rate == pytest.approx(0.75, abs=1e-6)


def test_length_controlled_win_rate_without_a_finite_fit_says_so():
    """All wins (or all losses): θ0 has no finite fit. The old Newton iterate reported an interval of about
    [0, 1]; now the fit is marked absent and carries the raw rate with its Wilson interval."""
    d = [5.0, -3.0, 12.0, 0.0, 7.0, -1.0, 2.0, 9.0]
    for y, raw in (([1.0] * 8, 1.0), ([0.0] * 8, 0.0)):
        fit = length_controlled_win_rate(y, d)
        assert fit is not None and fit.exists is False
        assert fit.lc_win_rate == raw and (fit.low, fit.high) == pytest.approx(wilson(raw, 8))
        assert fit.high - fit.low < 0.5  # a real interval, not [0, 1]
    # one tie among the wins: the fit exists and its interval stays inside (0, 1)
    fit = length_controlled_win_rate([1.0] * 7 + [0.5], d)
    assert fit.exists and 0.5 < fit.lc_win_rate < 1.0 and fit.low > 0.01 and fit.high < 1.0
    row = dict((a, b) for a, b, _ in table_rows({"judge_kind": "pairwise", "length_unit": "tokens", "win_rate": 1.0,
                                                  "win_rate_low": 0.676, "win_rate_high": 1.0,
                                                  "lc_no_fit": "no finite fit: the model won every prompt"}))
    assert row["length-controlled win rate"] == "no finite fit: the model won every prompt; raw win rate 1.000 [0.676, 1.000]"


def test_cli_eval_prints_table_and_one_error_line(tmp_path, tiny_llama_dir, arith_file, capsys):
    from prefdata.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--run", str(tmp_path / "ev"), "--model", str(tiny_llama_dir), "--baseline", "gold", "--prompts",
              str(arith_file), "--judge", "verify:number", "--reference-field", "answer", "--backend", "hf",
              "--max-tokens", "4", "--limit", "2", "--quiet"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "accuracy (95% CI)" in out and "length-controlled win rate" in out and "eval.json" in out
    with pytest.raises(SystemExit) as e:
        main(["eval", "--run", str(tmp_path / "ev4"), "--model", str(tiny_llama_dir), "--baseline", "gold", "--prompts",
              str(arith_file), "--judge", "python:nope.py:f", "--reference-field", "answer", "--backend", "hf", "--quiet"])
    assert e.value.code == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "nope.py" in err[0]


def test_eval_with_a_reward_model_mean_scores_and_win_rate_by_score(tmp_path, tiny_llama_dir, demo_model_dir, arith_file):
    """A reward model as the eval judge: each side's mean score and the win rate by score, checked against the same
    model scoring each answer alone (batch size 1, a separate judge object)."""
    from prefdata.judges.reward_model import RewardModelJudge
    from prefdata.judges.verdict import Candidate, ScoreRequest
    from tests.helpers import build_tiny_rm

    rm = build_tiny_rm(tmp_path / "rm", demo_model_dir, seed=3)
    # float32: in bf16 a score moves ~1e-3 with what else is in its batch (the check below scores one at a time)
    cfg = EvalConfig(model=str(tiny_llama_dir), baseline="gold", prompts=str(arith_file), judge=str(rm),
                     backend="hf", max_tokens=6, rank={"dtype": "float32"})
    run = RunDir(tmp_path / "ev")
    s = eval_run(run, cfg, progress=False)
    assert s["judge_kind"] == "reward-model" and s["compared"] == 7 and s.get("accuracy") is None

    alone = RewardModelJudge(str(rm), batch_size=1, dtype="float32")
    msgs = dict(zip(*run.read_prompts().select(["prompt_id", "messages"]).to_dict(as_series=False).values(), strict=True))
    cands = run.read_candidates(unique=True).filter(pl.col("kind") == "sample")
    by_side: dict[str, dict[str, float]] = {"model": {}, "baseline": {}}
    for r in cands.iter_rows(named=True):
        side = "model" if r["sampler_hash"] == s["model_sampler"] else "baseline"
        req = ScoreRequest(r["prompt_id"], tuple((m["role"], m["content"]) for m in msgs[r["prompt_id"]]),
                           Candidate(r["candidate_id"], r["text"]))
        by_side[side][r["prompt_id"]] = alone.score([req])[0].score
    want_model = float(np.mean(list(by_side["model"].values())))
    want_base = float(np.mean(list(by_side["baseline"].values())))
    assert s["mean_score"] == pytest.approx(want_model, abs=1e-4)
    assert s["baseline_mean_score"] == pytest.approx(want_base, abs=1e-4)
    outcome = [1.0 if by_side["model"][p] > by_side["baseline"][p] else 0.0 if by_side["model"][p] < by_side["baseline"][p]
               else 0.5 for p in by_side["model"]]
    assert s["win_rate"] == pytest.approx(sum(outcome) / len(outcome))
    assert (s["win_rate_low"], s["win_rate_high"]) == pytest.approx(_wilson_by_hand(s["win_rate"], 7))
