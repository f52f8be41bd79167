"""`prefdata iterate` never trains on rankings that rest on failed judge calls (issue 10 item 5): the round stops
before export with rank's exit status, and the same command run again retries the calls and goes on."""

from __future__ import annotations

import pytest

from prefdata.iterate import IterateConfig, RoundNotFinal, iterate

JUDGE = '''
import os


def flaky(messages, completion, reference):
    if not os.path.exists(os.environ["PREFDATA_TEST_JUDGE_UP"]):
        raise RuntimeError("the judge is down")
    return float(len(completion))
'''


def test_failed_judge_calls_stop_the_round_and_a_rerun_goes_on(tmp_path, tiny_llama_dir, monkeypatch):
    judge = tmp_path / "judge.py"
    judge.write_text(JUDGE)
    up = tmp_path / "up"
    monkeypatch.setenv("PREFDATA_TEST_JUDGE_UP", str(up))
    cfg = IterateConfig(
        rounds=1, model=str(tiny_llama_dir), prompts="arithmetic", prompts_per_round=3,
        rank={"judge": f"python:{judge}:flaky"},
        generate={"backend": "hf", "n": 3, "max_tokens": 8, "reference_field": "answer"},
        export={"keep_truncated": True},
        train={"per_device_train_batch_size": 2, "learning_rate": 1e-4, "save_steps": 1, "max_length": 128,
               "max_prompt_length": 64, "report_to": [], "max_steps": 1},
    )
    work = tmp_path / "loop"
    with pytest.raises(RoundNotFinal, match=r"round 0: 12 judge calls failed.*run the same command again") as e:
        iterate(work, cfg, progress=False)
    assert e.value.exit_code == 3
    assert not (work / "round-0" / "exports").exists() and not (work / "round-0" / "train").exists()

    up.touch()  # the judge is back: the rerun retries exactly the failed calls, then exports and trains
    logs: list[str] = []
    iterate(work, cfg, progress=False, log=logs.append)
    assert (work / "round-0" / "train" / "prefdata_train.json").is_file()
    assert any("rank:" in line and "comparisons 12" in line and "failures 0" in line for line in logs), logs
