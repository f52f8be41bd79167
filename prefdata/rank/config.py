"""`prefdata rank`'s config, the judge hash made of its identity fields, and the exit of an unfinished rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefdata.distributed import check_runner, ray_address_field
from prefdata.errors import PrefdataError
from prefdata.judges.config import JudgeConfig, judge_field, to_judge_config
from prefdata.judges.verdict import (
    PairJudge,
    PointwiseJudge,
)
from prefdata.options import identity_fields, opt
from prefdata.rank.strategies import STRATEGIES

# What rankings are for (export's --pairs, and `ranking` for --shape ranking); all but best-worst need a full order.
RANK_FOR = ("best-worst", "best-vs-each", "all", "adjacent", "ranking")

# `prefdata rank` exits with this when judge calls failed (or the endpoint went away): the rankings of some
# prompts are not final; a rerun of the same command retries exactly those calls.
EXIT_FAILURES = 3


class JudgeUnreachable(PrefdataError):
    """The judge endpoint stayed unreachable; the run stopped early (what was answered is kept)."""

    exit_code = EXIT_FAILURES


@dataclass
class RankConfig:
    """Config of `prefdata rank` (the same object for the library, the CLI flags and --config YAML).

    The judge's options are JudgeConfig's (declared there, carried here flat: `judge_field`). Fields that change
    results (judge, model, template, sampling, logprob mode, policy, strategy, seed for `random`, min_margin,
    kinds) enter the judge hash; transport settings (base_url, concurrency, retries, rate limit, batch sizes) do
    not, so they can change between a run and its resume.
    """

    judge: str = judge_field("judge")
    judge_model: str | None = judge_field("judge_model")
    base_url: list[str] = judge_field("base_url")
    api_key_env: str = judge_field("api_key_env")
    position_bias: str = judge_field("position_bias")
    strategy: str | None = opt(None, "iterative | sort | round-robin | scores; none: scores for a reward model, and for an LLM "
                               "judge sort when --pairs needs every candidate's place, else iterative.", identity=True)
    pairs: str = opt("best-worst", "The export these rankings are for: best-worst | best-vs-each | all | adjacent | ranking "
                     "(the ranking shape). Picks the strategy when --strategy is not given: all but best-worst need a "
                     "complete order, which sort gives in about N·log₂N comparisons.", identity=False)
    seed: int = judge_field("seed")
    temperature: float = judge_field("temperature")
    max_tokens: int | None = judge_field("max_tokens")
    logprobs: bool = judge_field("logprobs")
    tie_band: float = judge_field("tie_band")
    min_margin: float = opt(0.0, "Scores: candidates within this score difference tie.", identity=True)
    kinds: list[str] = opt([], "Rank only candidates of this kind (repeatable); none: all.", flag=("--kind", "--kinds"), identity=True)
    sampler: str | None = opt(None, "Rank only this sampler's candidates (its hash; a unique prefix will do); needed when "
                              "the run holds several samplers. `all`: rank them together (pairs may mix samplers).", identity=True)
    concurrency: int = judge_field("concurrency")
    max_retries: int = judge_field("max_retries")
    backoff_s: float = judge_field("backoff_s")
    requests_per_minute: float | None = judge_field("requests_per_minute")
    timeout_s: float = judge_field("timeout_s")
    unreachable_after: int = judge_field("unreachable_after")
    batch_size: int = opt(64, "Judge calls per round and per judgments shard; a crash loses at most the rounds in flight "
                          "(an OpenAI judge keeps 1 + concurrency/batch_size of them).", identity=False)
    group_size: int = opt(4096, "Prompts read, judged and written together, then dropped: memory follows this, not the "
                          "size of the run.", identity=False)
    rm_batch_size: int = judge_field("rm_batch_size")
    rm_max_length: int | None = judge_field("rm_max_length")
    rm_backend: str = judge_field("rm_backend")
    max_model_len: int = judge_field("max_model_len")
    tensor_parallel_size: int = judge_field("tensor_parallel_size")
    dtype: str = judge_field("dtype")
    progress: bool = opt(True, "Show the progress bar.", identity=False)
    engine: str = opt("local", "Where the judge runs: local | ray (an in-process judge, reward model or verifier in a "
                      "pool of Ray actors).", identity=False)
    ray_address: str | None = ray_address_field()
    dp: int | None = opt(None, "--engine ray: judge actors; none: the cluster's GPUs, or its nodes on CPU.", identity=False)

    def __post_init__(self) -> None:
        if self.strategy is not None and self.strategy not in (*STRATEGIES, "scores"):
            raise ValueError(f"strategy must be one of {', '.join((*STRATEGIES, 'scores'))}, got {self.strategy!r}")
        if self.pairs not in RANK_FOR:
            raise ValueError(f"pairs must be one of {', '.join(RANK_FOR)}, got {self.pairs!r}")
        if self.batch_size < 1 or self.group_size < 1:
            raise ValueError("batch_size, concurrency, rm_batch_size and group_size must be at least 1")
        if self.min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {self.min_margin}")
        check_runner(self.engine)
        if self.dp is not None and self.dp < 1:
            raise PrefdataError(f"--dp must be at least 1, got {self.dp}")
        self.judge_config()  # the judge's own checks

    def judge_config(self) -> JudgeConfig:
        return to_judge_config(self)

    def resolve_strategy(self, pointwise: bool) -> tuple[str, str]:
        """(strategy, why it was chosen). The choice is explicit in the judge hash and run.json (`strategy`,
        `strategy_chosen_by`): a run ranked before sort existed resolved to iterative and still does, because
        --pairs defaults to best-worst, so its rankings keep their judge hash."""
        if self.strategy is not None:
            return self.strategy, "--strategy"
        if pointwise:
            return "scores", "the default for a reward model or verifier"
        if self.pairs == "best-worst":
            return "iterative", "the default for --pairs best-worst"
        return "sort", f"the default for --pairs {self.pairs}, which needs every candidate's place"


def judge_identity(cfg: RankConfig, judge: PairJudge | PointwiseJudge, strategy: str, sampler: str | None = None
                   ) -> dict[str, Any]:  # fmt: skip
    """What the judge hash is made of: the judge's own record (the fields marked identity="judge" enter there)
    and every field marked identity=True, as it applies to this kind of judge (None where it does not).
    `sampler` enters only when the run holds several samplers, so a one-sampler run's hash is unchanged."""
    pointwise = strategy == "scores"
    applied = {
        "strategy": strategy,  # resolved (RankConfig.resolve_strategy): none means scores, sort or iterative
        "position_bias": None if pointwise else cfg.position_bias,
        "seed": cfg.seed if (cfg.position_bias == "random" and not pointwise) else None,
        "min_margin": cfg.min_margin if pointwise else None,
        "kinds": sorted(cfg.kinds),
        "sampler": sampler,
    }
    identity: dict[str, Any] = {"judge": judge.config()}
    order = list(applied)  # run.json shows the identity in this order (the hash sorts its keys)
    for name in sorted(identity_fields(RankConfig), key=lambda n: order.index(n) if n in order else len(order)):
        value = applied.get(name, getattr(cfg, name))
        if name != "sampler" or value is not None:
            identity[name] = value
    return identity
