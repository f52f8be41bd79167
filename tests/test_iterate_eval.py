"""`prefdata iterate` with a held-out eval slice: tiny real Llama (transformers sampler), a verifier judge, AIPO.

No vLLM: the sampler is transformers `generate`, the judge a `python:` verifier, so this runs in the fast loop.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from prefdata.iterate import IterateConfig, iterate
from prefdata.run.store import RunDir

PARITY = '''
def even_words(messages, completion, reference):
    assert reference is not None
    return float(len(completion.split()) % 2 == 0)
'''


@pytest.fixture
def parity_judge(tmp_path):
    f = tmp_path / "parity.py"
    f.write_text(PARITY)
    return f"python:{f}:even_words"


def _cfg(tiny_llama_dir, judge: str, rounds: int) -> IterateConfig:
    return IterateConfig(
        rounds=rounds, model=str(tiny_llama_dir), prompts="arithmetic", prompts_per_round=4,
        eval_size=6, eval_previous=True, rank={"judge": judge}, export={"keep_truncated": True},
        generate={"backend": "hf", "reference_field": "answer", "n": 3, "max_tokens": 8},
        train={"per_device_train_batch_size": 2, "learning_rate": 1e-4, "logging_steps": 1, "save_steps": 1,
               "max_length": 256, "max_prompt_length": 128, "report_to": [], "max_steps": 1},
    )


def test_iterate_evaluates_every_round_on_a_held_out_slice_and_resumes(tmp_path, tiny_llama_dir, parity_judge):
    work = tmp_path / "loop"
    logs: list[str] = []
    table = iterate(work, _cfg(tiny_llama_dir, parity_judge, rounds=1), progress=False, log=logs.append).table
    held = {json.dumps(json.loads(x)["messages"]) for x in (work / "eval_prompts.jsonl").read_text().splitlines()}
    assert len(held) == 6
    e0 = json.loads((work / "round-0" / "eval" / "eval.json").read_text())
    assert e0["judge_kind"] == "verifier" and e0["prompts"] == 6 and e0["compared"] == 6
    assert e0["model"] == "round-0/train" and e0["accuracy"] is not None and e0["baseline_accuracy"] is not None
    assert table["eval_accuracy"].to_list() == [e0["accuracy"]]
    assert table["eval_accuracy_low"][0] <= e0["accuracy"] <= table["eval_accuracy_high"][0]
    for col in ("eval_baseline_accuracy", "eval_win_rate", "eval_lc_win_rate", "eval_len_mean", "eval_baseline_len_mean"):
        assert table[col].null_count() == 0, col
    assert any(line.startswith("round 0: eval vs") for line in logs)

    # round 1 resumes: round 0 and its eval are kept, round 0's checkpoint is the baseline of eval-previous
    e0_text = (work / "round-0" / "eval" / "eval.json").read_text()
    n_eval0 = RunDir(work / "round-0" / "eval").read_candidates().height
    table = iterate(work, _cfg(tiny_llama_dir, parity_judge, rounds=2), progress=False, log=logs.append).table
    assert table.height == 2 and table["eval_accuracy"].null_count() == 0
    assert (work / "round-0" / "eval" / "eval.json").read_text() == e0_text
    assert RunDir(work / "round-0" / "eval").read_candidates().height == n_eval0
    assert table["eval_prev_win_rate"].to_list()[0] is None and table["eval_prev_win_rate"].to_list()[1] is not None
    prev = json.loads((work / "round-1" / "eval-previous" / "eval.json").read_text())
    assert prev["baseline"] == "round-0/train" and prev["model"] == "round-1/train"
    # the starting model's answers were sampled once and copied into each round's eval
    base = RunDir(work / "eval-baseline").read_candidates()
    assert base.filter(pl.col("kind") == "sample").height == 6
    shash = base["sampler_hash"][0]
    for t in (0, 1):
        c = RunDir(work / f"round-{t}" / "eval").read_candidates().filter(pl.col("sampler_hash") == shash)
        assert set(c["text"]) <= set(base["text"])
        assert json.loads((work / f"round-{t}" / "eval" / "eval.json").read_text())["baseline_accuracy"] == e0["baseline_accuracy"]
    # the held-out prompts never entered training
    for t in (0, 1):
        trained = {json.dumps(m) for m in RunDir(work / f"round-{t}").read_prompts()["messages"].to_list()}
        assert not trained & held
    md = (work / "rounds.md").read_text()
    assert "eval_accuracy" in md and "eval_lc_win_rate" in md
    assert pl.read_parquet(work / "rounds.parquet").equals(table)
    # a full rerun changes nothing
    logs.clear()
    again = iterate(work, _cfg(tiny_llama_dir, parity_judge, rounds=2), progress=False, log=logs.append).table
    assert logs == ["round 0: done", "round 1: done"] and again.equals(table)


def test_eval_off_keeps_the_old_table(tmp_path, tiny_llama_dir, parity_judge):
    cfg = _cfg(tiny_llama_dir, parity_judge, rounds=1)
    cfg.eval_size = 0
    cfg.eval_previous = False
    table = iterate(tmp_path / "loop", cfg, progress=False, log=lambda s: None).table
    assert table["eval_accuracy"].null_count() == 1 and not (tmp_path / "loop" / "eval_prompts.jsonl").exists()
    assert "eval_" not in (tmp_path / "loop" / "rounds.md").read_text()
