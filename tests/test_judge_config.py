"""One judge config: the judge's options are declared once, on JudgeConfig, and carried flat by the stages."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from prefdata.eval.judge_eval import JudgeEvalConfig
from prefdata.eval.run import EvalConfig
from prefdata.judges.config import JudgeConfig, judge_fields, to_judge_config
from prefdata.rank import RankConfig


def test_rank_carries_every_judge_field_as_declared() -> None:
    theirs = {f.name: f for f in dataclasses.fields(JudgeConfig)}
    ours = {f.name: f for f in dataclasses.fields(RankConfig)}
    assert set(judge_fields(RankConfig)) == set(theirs)
    for name, f in theirs.items():
        assert ours[name].metadata["help"] == f.metadata["help"]
        assert ours[name].metadata.get("flag") == f.metadata.get("flag")
        assert dataclasses.asdict(RankConfig())[name] == dataclasses.asdict(JudgeConfig())[name]
    assert RankConfig(judge="verify:number", seed=3).judge_config() == JudgeConfig(judge="verify:number", seed=3)


def test_eval_and_judge_eval_carry_judge_fields_declared_once() -> None:
    assert judge_fields(EvalConfig) == ("judge", "judge_model", "base_url", "position_bias")
    cfg = EvalConfig(judge="verify:number", baseline="b", base_url=["http://x/v1"])
    assert to_judge_config(cfg) == JudgeConfig(judge="verify:number", base_url=["http://x/v1"])
    assert set(judge_fields(JudgeEvalConfig)) < {f.name for f in dataclasses.fields(JudgeConfig)}


def test_judges_never_import_a_stage() -> None:
    """The judge builder takes a JudgeConfig: importing it loads no stage module (the old rank <-> build circle)."""
    code = "import sys, prefdata.judges.build; print(sorted(m for m in sys.modules if m in ('prefdata.rank', 'prefdata.eval.run')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
