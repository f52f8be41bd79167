"""Identity on the field: every field of a hashed config says whether it changes results (`opt(identity=...)`)."""

from __future__ import annotations

import dataclasses

import pytest

from prefdata.generate import GenerateConfig, sampler_hash
from prefdata.iterate.eval import training_only
from prefdata.judges.config import JudgeConfig
from prefdata.options import identity_fields
from prefdata.rank import RankConfig, judge_identity


@pytest.mark.parametrize("cls", [GenerateConfig, RankConfig, JudgeConfig])
def test_every_field_is_in_the_identity_or_marked_as_not_changing_results(cls: type) -> None:
    unmarked = [f.name for f in dataclasses.fields(cls) if f.metadata.get("identity") not in (True, False, "judge")]
    assert unmarked == [], f"{cls.__name__}: mark these fields identity=True/'judge'/False next to their help"


def _changed(value: object) -> object:
    """Another valid value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value / 2 if isinstance(value, float) and value else value + 1
    if isinstance(value, str):
        return "hf"
    return ["x"] if isinstance(value, list) else 2


def test_sampler_hash_follows_the_marked_fields() -> None:
    base = GenerateConfig()
    for f in dataclasses.fields(GenerateConfig):
        if f.name in ("model", "prompts", "shard") or f.name not in identity_fields(GenerateConfig):
            continue
        new = _changed(getattr(base, f.name))
        assert sampler_hash(dataclasses.replace(base, **{f.name: new})) != sampler_hash(base), f.name
    for name in ("batch_size", "concurrency", "timeout", "dtype"):
        assert name not in identity_fields(GenerateConfig)


def test_judge_hash_takes_every_identity_field() -> None:
    class Judge:
        def config(self) -> dict[str, object]:
            return {"kind": "test"}

    identity = judge_identity(RankConfig(), Judge(), "iterative")  # type: ignore[arg-type]
    assert set(identity) == {"judge", *identity_fields(RankConfig)} - {"sampler"}
    assert set(identity_fields(RankConfig, "judge")) == set(identity_fields(JudgeConfig, "judge"))


def test_eval_answers_take_no_training_sampling_setting() -> None:
    assert {"n", "temperature", "max_tokens", "model", "prompts"} <= training_only()
    assert not training_only() & {"seed", "dtype", "backend", "stop"}
