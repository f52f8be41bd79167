"""`JudgeConfig`: every option of a judge, declared once.

`build_judge` takes it. `RankConfig` and `EvalConfig` carry these options as their own flat fields (so the flags
and YAML keys stay `--judge`, `--base-url`, ... and run.json keeps its shape): each of those fields is declared
with `judge_field(name)`, a copy of the declaration here, and `judge_config()` hands the values to the judge.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from prefdata.config import check_range, check_seed
from prefdata.judges.verdict import POLICIES
from prefdata.llm.endpoint import check_endpoint, endpoint_field, normalize_urls
from prefdata.options import opt

RM_BACKENDS = ("auto", "hf", "vllm")


@dataclass
class JudgeConfig:
    """Who judges, and how it is reached. Pairwise-only settings (logprobs, tie_band) and reward-model-only settings
    (rm_*) sit together here because one `--judge` value decides which kind is built."""

    judge: str = opt("mt-bench-pair-v2", "Template name (judges/), template .yaml path, reward-model folder, verify:number, "
                     "verify:exact, or python:FILE.py:FUNCTION.", identity="judge")
    judge_model: str | None = opt(None, "Served model name (OpenAI), or model path for in-process vLLM; none: the first "
                                  "served model / the demo model.", identity="judge")
    base_url: list[str] = endpoint_field("base_url")  # none: the in-process vLLM judge
    api_key_env: str = endpoint_field("api_key_env")
    unreachable_after: int = endpoint_field("unreachable_after")
    position_bias: str = opt("both", f"Order policy: {' | '.join(POLICIES)}.", identity=True)
    seed: int = opt(0, "Seed of the `random` order policy and the vLLM engine.", identity=True)
    temperature: float = opt(0.0, "Judge sampling temperature.", identity="judge")
    max_tokens: int | None = opt(None, "Judge reply limit; none: the template's.", identity="judge")
    logprobs: bool = opt(False, "One-token verdict read from log-probs (the template needs logprob_labels).", identity="judge")
    tie_band: float = opt(0.05, "Logprob mode: |P(first) - 0.5| <= band is a tie.", identity="judge")
    # the endpoint's own defaults: a judge call is short (a verdict of a few tokens), so 120 s is plenty, and a call that
    # still fails after 4 retries is recorded as a failure that a rerun retries (generate's differ: see GenerateConfig)
    concurrency: int = endpoint_field("concurrency")
    max_retries: int = endpoint_field("max_retries")
    backoff_s: float = endpoint_field("backoff_s")
    requests_per_minute: float | None = endpoint_field("requests_per_minute")
    timeout_s: float = endpoint_field("timeout_s")
    rm_batch_size: int = opt(16, "Reward-model forward batch (halved on out-of-memory).", identity=False)
    rm_max_length: int | None = opt(None, "Reward-model input limit; longer inputs are cut and flagged.", identity="judge")
    rm_backend: str = opt("auto", "Reward-model engine: auto (vllm from 2000 candidates when installed, else hf) | hf "
                          "(transformers) | vllm (pooling runner); see prefdata.judges.build.rm_backend_for.", identity=False)
    max_model_len: int = opt(4096, "In-process vLLM judge context.", identity=False)
    tensor_parallel_size: int = opt(1, "In-process vLLM judge or reward model: GPUs per engine (vLLM tensor parallel); with "
                                    "--engine ray each judge actor reserves this many GPUs (CPUs on a CPU cluster).",
                                    flag=("--tensor-parallel-size", "--tp"), identity=False)
    dtype: str = opt("auto", "In-process judge / reward-model dtype: auto (bf16 where the CPU or GPU computes it natively, "
                     "else float32 on CPU, float16 on GPU) | float32 | bfloat16 | float16.", identity="judge")

    def __post_init__(self) -> None:
        if self.position_bias not in POLICIES:
            raise ValueError(f"position_bias must be one of {', '.join(POLICIES)}, got {self.position_bias!r}")
        if self.rm_batch_size < 1:
            raise ValueError("batch_size, concurrency, rm_batch_size and group_size must be at least 1")
        if not 0.0 <= self.tie_band < 0.5:
            raise ValueError(f"tie_band must be in [0, 0.5), got {self.tie_band}")
        if self.rm_backend not in RM_BACKENDS:
            raise ValueError(f"rm_backend must be auto, hf or vllm, got {self.rm_backend!r}")
        self.base_url = normalize_urls(self.base_url)
        check_endpoint(self)
        check_range("--temperature", self.temperature, 0)
        for flag, value in (("--max-tokens", self.max_tokens), ("--rm-max-length", self.rm_max_length),
                            ("max_model_len", self.max_model_len), ("--tensor-parallel-size", self.tensor_parallel_size)):  # fmt: skip
            check_range(flag, value, 1)
        check_seed("--seed", self.seed)

    def judge_config(self) -> JudgeConfig:
        return self


class HasJudge(Protocol):
    """A stage config that carries the judge's options as its own fields (RankConfig)."""

    def judge_config(self) -> JudgeConfig: ...


_FIELDS = {f.name: f for f in dataclasses.fields(JudgeConfig)}
SHARED = "judge_config"  # metadata key: this field is JudgeConfig's, carried flat by a stage config


def judge_field(name: str, **change: Any) -> Any:
    """JudgeConfig's declaration of `name` (default, help, flags) for a stage config that carries it flat.

    `change`: `default=` where the stage needs another one (eval's judge has none: it must be given)."""
    f = _FIELDS[name]
    meta = {**f.metadata, SHARED: True}
    if "default" in change:
        return dataclasses.field(default=change["default"], metadata=meta)
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=meta)
    return dataclasses.field(default=f.default, metadata=meta)


def judge_fields(cls: type) -> tuple[str, ...]:
    """The names of the JudgeConfig fields `cls` carries (declared with `judge_field`)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(SHARED))


def to_judge_config(cfg: Any) -> JudgeConfig:
    """A JudgeConfig of the judge fields `cfg` carries (the others keep JudgeConfig's defaults)."""
    return JudgeConfig(**{name: getattr(cfg, name) for name in judge_fields(type(cfg))})
