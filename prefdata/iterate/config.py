"""`prefdata iterate`'s config: the loop's own fields, and the stage configs it holds as mappings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from prefdata.config import check_range, stage_fields
from prefdata.distributed import RUNNERS, check_runner, ray_address_field
from prefdata.errors import PrefdataError
from prefdata.options import opt


class RoundNotFinal(PrefdataError):
    """A round's rankings rest on failed judge calls: the loop stops before export (a rerun retries them)."""

    exit_code = 3  # prefdata.rank.EXIT_FAILURES, as `prefdata rank` exits in the same case


# The loop's own defaults where they differ from a stage's (each field is declared once, on its stage config):
# shorter answers, and a judge template a small in-process model can follow.
LOOP_DEFAULTS: dict[str, dict[str, Any]] = {"generate": {"max_tokens": 256}, "rank": {"judge": "verdict-only"}}


# The stage fields the loop's command line names directly (the rest: --set STAGE.FIELD=VALUE or the YAML maps);
# their help and checks are the stage's.
LOOP_FLAGS: dict[str, dict[str, str | tuple[str, ...]]] = {
    "generate": {"n": ("-n", "--n"), "temperature": "--temperature", "max_tokens": "--max-tokens"},
    "rank": {"judge": "--judge", "judge_model": "--judge-model", "base_url": "--base-url",
             "position_bias": "--position-bias"},
    "export": {"keep_truncated": "--keep-truncated/--drop-truncated"},
    "train": {"loss_type": ("--loss", "--loss-type"), "max_steps": "--max-steps"},
}  # fmt: skip


STAGE_CLASSES = {"generate": "prefdata.generate:GenerateConfig", "rank": "prefdata.rank:RankConfig",
                 "export": "prefdata.export:ExportConfig", "train": "prefdata.train.config:AIPOConfig"}  # fmt: skip


# Fields the loop sets itself, per round (where generate and rank run: the loop's --engine and --ray-address).
RESERVED = {"generate": ("prompts", "model", "engine", "ray_address"), "rank": ("engine", "ray_address"),
            "export": ("out", "name", "overwrite"), "train": ("output_dir", "model")}  # fmt: skip


@dataclass
class IterateConfig:
    """The loop. Stage settings go in the `generate`, `rank`, `export`, `train` mappings (any field of
    GenerateConfig, RankConfig, ExportConfig, AIPOConfig), from YAML, flags or repeated --set; each round builds
    the typed stage configs from them (`stage_config`), over LOOP_DEFAULTS and the stages' own defaults."""

    rounds: int = opt(2, "Number of rounds.")
    model: str | None = opt(None, "The starting policy (round 0); none: the demo model.")
    prompts: str | None = opt(None, "Prompt file; none: the bundled MT-Bench questions.")
    prompts_per_round: int | None = opt(16, "Prompts each round takes, a new slice of the file per round (wrapping "
                                        "around); none: all every round.")
    self_instruct: bool = opt(False, "Write each round's prompts with the current policy from seed examples in `prompts` "
                              "(AIPO pipeline).")
    self_instruct_prompts: int = opt(16, "Prompts the policy writes per round (--self-instruct).")
    eval_prompts: str | None = opt(None, "Held-out eval prompts (file or bundled set, e.g. arithmetic-eval): every round's "
                                   "checkpoint is evaluated on them against the starting model, with the loop's judge.")
    eval_size: int = opt(0, "How many eval prompts: the first K of --eval-prompts, or without it K prompts of --prompts "
                         "kept apart by prompt id. 0 and no --eval-prompts: no eval. Eval prompts never enter training.")
    eval_previous: bool = opt(False, "Also evaluate each round's checkpoint against the previous round's.")
    eval_max_tokens: int | None = opt(None, "Eval answer limit; none: the generate stage's max_tokens.")
    eval_judge: str | None = opt(None, "The eval's judge; none: the loop's judge (e.g. train on a reward model, evaluate "
                                 "with verify:number).")
    reuse_engine: bool = opt(False, "Keep one vLLM policy engine for every round and load each new checkpoint into it in "
                             "place (vLLM reload_weights) instead of starting an engine per round (minutes each on a "
                             "CPU); not with an in-process LLM judge, which shares the engine.", identity=False)
    engine: str = opt("local", f"Where each round's sampling, ranking and eval run their engines: {' | '.join(RUNNERS)} "
                      "(actors on one Ray cluster for the whole loop; an LLM judge behind --base-url stays remote, "
                      "training stays in this process, on this machine).", identity=False)
    ray_address: str | None = ray_address_field()
    generate: dict[str, Any] = opt({}, "GenerateConfig fields (-n, --temperature, --max-tokens, --set generate.FIELD=VALUE).",
                                   cli=False)
    rank: dict[str, Any] = opt({}, "RankConfig fields (--judge, --judge-model, --base-url, --position-bias, --set rank.FIELD=VALUE). "
                               "judge_model none: the starting model (in-process vLLM) or the served model.", cli=False)
    export: dict[str, Any] = opt({}, "ExportConfig fields (--keep-truncated, --set export.FIELD=VALUE).", cli=False)
    train: dict[str, Any] = opt({}, "AIPOConfig fields (--loss, --max-steps, --set train.FIELD=VALUE).", cli=False)

    MOVED_FIELDS: ClassVar[dict[str, str]] = {"n": "generate", "temperature": "generate", "max_tokens": "generate",
                                             "judge": "rank", "judge_model": "rank", "base_url": "rank",
                                             "position_bias": "rank", "keep_truncated": "export", "loss_type": "train",
                                             "max_steps": "train"}  # fmt: skip

    def __post_init__(self) -> None:
        check_range("eval_size", self.eval_size, 0)
        check_range("--rounds", self.rounds, 1)
        check_range("--prompts-per-round", self.prompts_per_round, 1)
        check_range("--self-instruct-prompts", self.self_instruct_prompts, 1)
        check_range("--eval-max-tokens", self.eval_max_tokens, 1)
        check_runner(self.engine)
        if self.engine == "ray" and self.reuse_engine:
            raise PrefdataError("--reuse-engine keeps one vLLM engine in this process across rounds, but with --engine "
                                "ray the engines live in Ray actors for one stage at a time; drop one of the two")

    def stage(self, name: str) -> dict[str, Any]:
        """The fields the loop gives stage `name`: its LOOP_DEFAULTS, then the mapping (YAML, flags, --set)."""
        return {**LOOP_DEFAULTS.get(name, {}), **getattr(self, name)}

    def stage_config(self, stage: str, /, **per_round: Any) -> Any:
        """The typed config of `stage` for one round (`per_round`: what the loop sets, e.g. prompts, model)."""
        from prefdata.options import load_class

        return load_class(STAGE_CLASSES[stage])(**{**self.stage(stage), **per_round})

    def check_stages(self) -> None:
        """Check the `generate`/`rank`/`export`/`train` mappings (YAML, flags or --set) before round 0 starts, so
        a typo or a bad value stops the loop at once instead of after hours of sampling and ranking."""
        from prefdata.options import load_class

        for name in ("generate", "rank", "export", "train"):
            if name == "train" and not self.train:
                continue  # the trainer's imports are slow; an empty mapping has nothing to check
            cls = load_class(STAGE_CLASSES[name])
            setattr(self, name, stage_fields(cls, getattr(self, name), f"--set {name}", reserved=RESERVED.get(name, ())))
            if name == "train":  # built by train() itself with the round's output_dir; its values checked here
                try:
                    cls(output_dir="round-N/train", **self.train)
                except (PrefdataError, TypeError, ValueError) as e:
                    raise PrefdataError(f"--set train: {e}") from None
                continue
            try:
                built = self.stage_config(name)
            except (PrefdataError, TypeError, ValueError) as e:
                raise PrefdataError(f"--set {name}: {e}") from None
            if name == "generate" and (built.data_parallel_size or 1) > 1 and self.engine == "local":
                raise PrefdataError("--set generate.data_parallel_size: the loop samples with one engine per round; "
                                    "with --engine ray it is the number of engine actors")


def round_dir(workdir: Path, t: int) -> Path:
    return workdir / f"round-{t}"
