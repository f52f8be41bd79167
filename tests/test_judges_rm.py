"""Reward-model judge on a tiny sequence-classification Llama built here, with the real demo tokenizer."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.judges.reward_model import RewardModelJudge
from prefdata.judges.verdict import Candidate, ScoreRequest
from prefdata.rank import RankConfig, rank_run, read_judgments, read_rankings
from tests.helpers import build_tiny_llama, build_tiny_rm, make_candidates_run


def _reqs(n: int) -> list[ScoreRequest]:
    msgs = (("user", "Tell me something about cats."),)
    return [ScoreRequest("p", msgs, Candidate(f"c{i}", "Cats purr. " * (1 + (i * 7) % 13))) for i in range(n)]


def test_batched_scores_match_one_at_a_time_and_keep_order(tiny_rm_dir):
    judge = RewardModelJudge(str(tiny_rm_dir), batch_size=5, dtype="float32")  # bf16 moves ~1e-3 with the batch
    reqs = _reqs(12)
    batched = judge.score(reqs)
    assert [r.candidate_id for r in batched] == [q.candidate.id for q in reqs]
    single = [judge.score([q])[0] for q in reqs]
    for b, s in zip(batched, single, strict=True):
        assert b.score == pytest.approx(s.score, abs=1e-4)
        assert not b.truncated and b.error is None


def test_truncation_is_flagged(tiny_rm_dir):
    judge = RewardModelJudge(str(tiny_rm_dir), max_length=40)
    res = judge.score(_reqs(3))
    assert all(r.truncated and r.n_tokens == 40 for r in res)


def test_template_comes_from_the_reward_model(tiny_rm_dir):
    judge = RewardModelJudge(str(tiny_rm_dir))
    ids, _ = judge.encode(_reqs(1)[0])
    text = judge.tok.decode(ids)
    assert text.startswith("<|im_start|>system") and text.count("<|im_start|>") == 3  # no doubled BOS


def test_oom_halves_the_batch(tiny_rm_dir):
    judge = RewardModelJudge(str(tiny_rm_dir), batch_size=8)
    real = judge._forward
    sizes: list[int] = []

    def limited(seqs):  # a device that fits at most 2 sequences at once (no real OOM on a CPU test box)
        sizes.append(len(seqs))
        if len(seqs) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(seqs)

    judge._forward = limited  # type: ignore[method-assign]
    res = judge.score(_reqs(7))
    assert all(r.score is not None for r in res)
    assert sizes[:3] == [7, 4, 2] and all(s <= 2 for s in sizes[3:])  # halved, then kept small


def test_scores_strategy_in_rank_run(tmp_path, tiny_rm_dir):
    texts = [["Cats purr.", "Dogs bark loudly at night.", "Cats purr.", "Fish swim."], ["Only one."]]
    run, pids = make_candidates_run(tmp_path / "r", texts)
    s = rank_run(run, RankConfig(judge=str(tiny_rm_dir), progress=False))
    assert s["strategy"] == "scores"
    df = read_rankings(run, s["judge_hash"])
    row = df.filter(pl.col("prompt_id") == pids[0]).row(0, named=True)
    assert row["complete"] and row["comparisons"] == 3  # the duplicate text is scored once
    assert row["scores"] == sorted(row["scores"], reverse=True)
    assert row["best_id"] == row["candidate_ids"][0] and row["worst_id"] == row["candidate_ids"][-1]
    assert row["margin"] == pytest.approx(row["scores"][0] - row["scores"][-1])
    assert row["ties"] >= 1  # the two identical texts
    one = df.filter(pl.col("prompt_id") == pids[1]).row(0, named=True)
    assert one["best_id"] is None and one["worst_id"] is None
    j = read_judgments(run, s["judge_hash"])
    assert j.height == 4 and set(j["verdict"]) == {"score"} and j["b_id"].null_count() == 4
    assert rank_run(run, RankConfig(judge=str(tiny_rm_dir), progress=False))["judge_calls_new"] == 0
    with pytest.raises(PrefdataError, match="scores"):
        rank_run(run, RankConfig(judge=str(tiny_rm_dir), strategy="iterative", progress=False))


def _rank_cli(run, judge: Path, capsys) -> tuple[int, str]:
    from prefdata.cli import main

    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(run.path), "--judge", str(judge), "--no-progress"])
    return e.value.code, capsys.readouterr().err


def test_folders_that_are_not_reward_models_are_refused(tmp_path, demo_model_dir, capsys):
    import json
    import shutil

    run, _ = make_candidates_run(tmp_path / "r", [["Cats purr.", "Dogs bark."]])
    empty = tmp_path / "empty"
    empty.mkdir()
    causal = build_tiny_llama(tmp_path / "causal", demo_model_dir)
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(causal / "config.json", only_config / "config.json")
    cfg = json.loads((only_config / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    (only_config / "config.json").write_text(json.dumps(cfg))
    # the causal LM's weights under a sequence-classification config: the score head would be random
    fresh_head = tmp_path / "fresh-head"
    shutil.copytree(causal, fresh_head)
    (fresh_head / "config.json").write_text(json.dumps(cfg))
    cases = {
        empty: "is an empty folder",
        causal: "holds LlamaForCausalLM, not a reward model",
        only_config: "holds only a config and no weights",
        fresh_head: "no trained weights for score.weight",
    }
    capsys.readouterr()  # what building the models printed
    for folder, says in cases.items():
        code, err = _rank_cli(run, folder, capsys)
        # (library output such as transformers' load report goes to RUN/logs in a real terminal; here it is mixed in)
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(errors) == 1 and says in errors[0], (folder, err)
        assert "template file" not in err and "Traceback" not in err
    assert not (run.path / "judgments").exists()  # nothing half-written


def test_score_in_a_mixed_batch_equals_score_alone_when_pad_ids_differ(tmp_path, demo_model_dir):
    import json

    from transformers import AutoTokenizer

    folder = build_tiny_rm(tmp_path / "rm", demo_model_dir, seed=3)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    other = next(i for i in (0, 1, 2) if i != tok.pad_token_id)
    cfg["pad_token_id"] = other  # the head looks for this id; the tokenizer pads with another one
    (folder / "config.json").write_text(json.dumps(cfg))
    judge = RewardModelJudge(str(folder), batch_size=8)
    assert judge.model.config.pad_token_id != judge.tok.pad_token_id
    reqs = _reqs(6)
    mixed = judge.score(reqs)
    alone = [judge.score([q])[0] for q in reqs]
    for m, a in zip(mixed, alone, strict=True):
        assert m.score == pytest.approx(a.score, abs=1e-5)
    assert len({round(a.score, 6) for a in alone}) > 1  # a real spread of scores, not one constant
