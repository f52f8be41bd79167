"""`prefdata iterate` end to end on tiny real models: transformers sampling, a reward-model judge, AIPO training.

The vLLM path of the loop is the same code with another sampler; it is exercised by the README walk-through
(see bench/RESULTS.md) rather than here, to keep the suite to one engine per session.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.iterate import IterateConfig, iterate
from prefdata.run.store import RunDir


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, demo_model_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, head_dim=64, num_labels=1,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _cfg(tiny_llama_dir, tiny_rm_dir, rounds: int) -> IterateConfig:
    return IterateConfig(
        rounds=rounds, model=str(tiny_llama_dir), prompts_per_round=4, rank={"judge": str(tiny_rm_dir)},
        generate={"backend": "hf", "n": 3, "max_tokens": 8}, export={"keep_truncated": True},
        train={"per_device_train_batch_size": 2, "learning_rate": 1e-4, "logging_steps": 1, "save_steps": 1,
               "max_length": 256, "max_prompt_length": 128, "report_to": [], "max_steps": 2},
    )


def test_iterate_two_rounds_and_resume(tmp_path, tiny_llama_dir, tiny_rm_dir):
    work = tmp_path / "loop"
    logs: list[str] = []
    table = iterate(work, _cfg(tiny_llama_dir, tiny_rm_dir, rounds=1), progress=False, log=logs.append).table
    assert table.height == 1
    assert (work / "round-0" / "train" / "prefdata_train.json").is_file()
    # Extending the loop resumes: round 0 is not redone, round 1 samples from round 0's checkpoint.
    table = iterate(work, _cfg(tiny_llama_dir, tiny_rm_dir, rounds=2), progress=False, log=logs.append).table
    assert table.height == 2 and table["round"].to_list() == [0, 1]
    assert "round 0: done" in logs
    r1 = RunDir(work / "round-1").read_meta()["stages"]["generate"]
    assert [e["model"] for e in r1.values()] == ["round-0/train"]  # round 1's policy is round 0's checkpoint
    tr1 = json.loads((work / "round-1" / "train" / "prefdata_train.json").read_text())
    assert tr1["model"].endswith("round-0/train")  # ... which is also the starting point (and reference) of training
    # Each round took a new slice of the prompt file.
    p0 = set(RunDir(work / "round-0").read_prompts()["prompt_id"])
    p1 = set(RunDir(work / "round-1").read_prompts()["prompt_id"])
    assert len(p0) == len(p1) == 4 and not p0 & p1
    assert (work / "rounds.md").is_file() and (work / "rounds.png").stat().st_size > 1000
    df = pl.read_parquet(work / "rounds.parquet")
    assert df["pairs"].to_list() == [4, 4] and df["chosen_len_mean"].null_count() == 0
    # A full rerun does nothing new.
    before = RunDir(work / "round-1").read_candidates().height
    logs.clear()
    iterate(work, _cfg(tiny_llama_dir, tiny_rm_dir, rounds=2), progress=False, log=logs.append)
    assert logs == ["round 0: done", "round 1: done"]
    assert RunDir(work / "round-1").read_candidates().height == before


def test_iterate_refuses_a_changed_loop_config(tmp_path, tiny_llama_dir, tiny_rm_dir):
    work = tmp_path / "loop"
    work.mkdir()
    (work / "iterate.json").write_text(json.dumps({"config": {"rounds": 1, "n": 99}, "commands": []}))
    with pytest.raises(PrefdataError, match="different loop config"):
        iterate(work, _cfg(tiny_llama_dir, tiny_rm_dir, rounds=1), progress=False)
