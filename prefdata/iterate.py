"""`prefdata iterate`: generate → rank → export → train, round after round (the AIPO loop).

Round t samples from the checkpoint of round t−1 (the starting model for t = 0), ranks with a judge that
stays fixed across rounds, exports best-vs-worst pairs, and trains from that same checkpoint with it as
the reference (AIPO, papers.md 1.3). Every stage is resumable, so running the same command again after a
stop or a crash continues where it stopped.

Layout:
    WORKDIR/iterate.json            the loop's config and command lines
    WORKDIR/round-<t>/              a run directory (run.json, prompts, candidates, judgments, rankings)
    WORKDIR/round-<t>/exports/pairs the round's preference data (dataset card included)
    WORKDIR/round-<t>/train/        the round's checkpoint (the next round's policy and reference)
    WORKDIR/rounds.md, rounds.parquet, rounds.png   the per-round summary, rebuilt from the round folders
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from prefdata.config import check_range, stage_fields
from prefdata.console import captured, say
from prefdata.errors import PrefdataError
from prefdata.options import opt
from prefdata.records import TRAIN_SUMMARY
from prefdata.store import RunDir, atomic_write_bytes, check_writable, command_line


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
# Fields the loop sets itself, per round.
RESERVED = {"generate": ("prompts", "model"), "export": ("out", "name", "overwrite"), "train": ("output_dir", "model")}


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
                             "CPU); not with an in-process LLM judge, which shares the engine.")
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
            if name == "generate" and built.data_parallel_size > 1:
                raise PrefdataError("--set generate.data_parallel_size: the loop samples with one engine per round")


def round_dir(workdir: Path, t: int) -> Path:
    return workdir / f"round-{t}"


def policy_for_round(workdir: Path, cfg: IterateConfig, t: int) -> str | None:
    if t == 0:
        return cfg.model
    prev = round_dir(workdir, t - 1) / "train"
    if not (prev / TRAIN_SUMMARY).is_file():
        raise PrefdataError(f"round {t - 1} has no finished checkpoint in {prev}; rerun the loop to finish it")
    return str(prev)


def _slice_prompts(cfg: IterateConfig, t: int, out: Path, held_out: set[str] | None = None) -> str | None:
    """The round's prompt file: a new slice of the prompt file each round (wrapping around), without the
    held-out eval prompts, and with the reference answers when generate reads them."""
    if cfg.prompts_per_round is None and not held_out:
        return cfg.prompts
    from prefdata.prompts import load_prompts

    ref = cfg.generate.get("reference_field")
    table = load_prompts(cfg.prompts, field=cfg.generate.get("prompt_field"), reference_field=ref).table
    if held_out:
        table = table.filter(~pl.col("prompt_id").is_in(list(held_out)))
        if table.height == 0:
            raise PrefdataError("every prompt is held out for eval; lower --eval-size or pass --eval-prompts FILE")
    if cfg.prompts_per_round is None:
        rows = table
    else:
        k = min(cfg.prompts_per_round, table.height)
        start = (t * k) % table.height
        rows = table[[(start + i) % table.height for i in range(k)]]
    if ref:
        lines = [json.dumps({"messages": m, ref: r}, ensure_ascii=False) for m, r in zip(rows["messages"].to_list(),
                                                                                          rows["reference"].to_list(), strict=True)]
    else:
        lines = [json.dumps({"messages": m.to_list()}, ensure_ascii=False) for m in rows["messages"]]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    return str(out)


@dataclass
class IterateSummary:
    """The loop's result: the per-round table (also in rounds.md / rounds.parquet) of its workdir."""

    workdir: str
    table: pl.DataFrame

    # The terminal's columns (every column is in rounds.md / rounds.parquet): what a round did, and its eval.
    SHOWN: ClassVar[tuple[tuple[str, str], ...]] = (
        ("round", "round"), ("pairs", "pairs"), ("chosen_len_mean", "chosen len"),
        ("rejected_len_mean", "rejected len"), ("train_loss", "loss"), ("reward_margin", "margin"),
        ("eval_accuracy", "eval acc"), ("eval_baseline_accuracy", "start acc"), ("eval_win_rate", "win rate"),
        ("eval_lc_win_rate", "LC win"), ("eval_len_mean", "eval len"),
    )

    def lines(self) -> list[str]:
        w = Path(self.workdir)
        cols = [(c, h) for c, h in self.SHOWN if c in self.table.columns and self.table[c].null_count() < self.table.height]
        rows = [[h for _, h in cols]]
        for r in self.table.iter_rows(named=True):
            rows.append([_cell(r[c]) for c, _ in cols])
        widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
        shown = ["  ".join(v.rjust(n) for v, n in zip(row, widths, strict=True)) for row in rows]
        return ["", f"rounds finished: {self.table.height}; summary in {w / 'rounds.md'} and {w / 'rounds.png'}", *shown]

    def to_dict(self) -> dict[str, Any]:
        return {"workdir": self.workdir, "rounds": self.table.to_dicts()}


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


@captured("iterate")
def iterate(workdir: str | Path, cfg: IterateConfig, progress: bool = True, log: Any = say) -> IterateSummary:
    """Run (or resume) the loop; returns the per-round summary table."""
    from prefdata import iterate_eval as ie
    from prefdata.backends.vllm_engine import build_llm, shutdown_llm, start_engine
    from prefdata.export import export_run
    from prefdata.generate import GenerateConfig, generate_run, model_label, prompts_todo, sampler_dtype
    from prefdata.judges.verifier import is_verifier
    from prefdata.models import resolve_model
    from prefdata.rank import rank_run
    from prefdata.train import train

    workdir = Path(workdir)
    cfg.check_stages()
    check_writable(workdir, "--workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    _record(workdir, cfg)
    judge_llm: Any = None
    judge_path: str | None = None
    judging = cfg.stage_config("rank")  # the fixed judge; judge_model None means the starting model here
    in_process_judge = not judging.base_url and not Path(judging.judge).is_dir() and not is_verifier(judging.judge)
    if in_process_judge:
        judge_path = resolve_model(judging.judge_model if judging.judge_model else cfg.model)
    held_out = ie.eval_prompt_ids(workdir, cfg)  # never trained on
    start_path = resolve_model(cfg.model) if held_out else ""
    eval_judge_model = ((judging.judge_model if judging.base_url else judge_path)
                        if (judging.judge_model or in_process_judge) else None)  # fmt: skip
    reuse = cfg.reuse_engine and not in_process_judge
    shared: dict[str, Any] = {"llm": None, "model": None}

    def engine(gcfg: Any, path: str) -> Any:
        """The policy engine for `path`: a new one, or (reuse) the loop's one with `path`'s weights loaded."""
        if not reuse:
            return build_llm(gcfg, path)
        if shared["llm"] is None:
            shared["llm"], shared["model"] = build_llm(gcfg, path), path
        elif shared["model"] != path:
            reload_weights(shared["llm"], path)
            shared["model"] = path
        return shared["llm"]

    def release(llm: Any) -> None:
        if not reuse:
            shutdown_llm(llm)

    try:
        for t in range(cfg.rounds):
            rd = round_dir(workdir, t)
            run = RunDir(rd)
            if (rd / "train" / TRAIN_SUMMARY).is_file():
                log(f"round {t}: done")
                continue
            policy = policy_for_round(workdir, cfg, t)
            policy_path = resolve_model(policy)
            t0 = time.time()
            gen_fields = cfg.stage("generate")
            gen_cfg_probe = GenerateConfig(model=policy_path, **gen_fields)
            log(f"round {t}: policy {model_label(gen_cfg_probe)} ({sampler_dtype(gen_cfg_probe) or gen_cfg_probe.backend})")
            policy_llm = None
            try:
                # -- prompts (optionally written by the policy) and sampling
                if cfg.self_instruct:
                    from prefdata.self_instruct import SelfInstructConfig, run_self_instruct

                    si_file = rd / "self_instruct.jsonl"
                    if not si_file.is_file():
                        policy_llm = engine(gen_cfg_probe, policy_path)
                        si_cfg = SelfInstructConfig(pool=cfg.prompts, num_prompts=cfg.self_instruct_prompts, seed=t)
                        si = run_self_instruct(policy_llm, si_cfg, si_file)
                        log(f"round {t}: self-instruct kept {si['prompts']} prompts ({si.get('filtered')})")
                    prompt_file = str(si_file)
                else:
                    sliced = rd / "round_prompts.jsonl"
                    prompt_file = str(sliced) if sliced.is_file() else _slice_prompts(cfg, t, sliced, held_out)
                if prompt_file != cfg.prompts:
                    gen_fields.pop("prompt_field", None)  # our own files use `messages` / `prompt`
                gcfg = GenerateConfig(prompts=prompt_file, model=policy_path, **gen_fields)
                # the policy also answers the eval prompts: as the starting model (round 0), or as the last checkpoint
                eval_todo = bool(held_out) and (ie.start_needs_sampling(workdir, cfg, start_path) if t == 0
                                                else bool(ie.pending(workdir, cfg, t - 1, start_path)))
                if gcfg.backend == "vllm" and policy_llm is None and (prompts_todo(run, gcfg) > 0 or eval_todo):
                    policy_llm = engine(gcfg, policy_path)
                if eval_todo and t == 0:
                    ie.sample_start(workdir, cfg, start_path, policy_llm, progress)
                elif eval_todo:
                    ie.sample(workdir, cfg, t - 1, start_path, policy_llm, progress)
                gs = generate_run(run, gcfg, llm=policy_llm, progress=progress)
                log(f"round {t}: generate: {gs.lines()[2]}")
                # -- rank with the fixed judge (round 0 can reuse the policy engine when it is the judge)
                if in_process_judge and judge_llm is None:
                    if policy_llm is not None and judge_path == policy_path:
                        judge_llm, policy_llm = policy_llm, None
                    else:
                        release(policy_llm)
                        policy_llm = None
                        judge_llm = start_engine(judge_path, seed=0)
            finally:
                release(policy_llm)
            rank_fields: dict[str, Any] = {"progress": progress}
            if in_process_judge:
                rank_fields["judge_model"] = judge_path
            rs = rank_run(run, cfg.stage_config("rank", **rank_fields), llm=judge_llm)
            log(f"round {t}: rank: {_brief(rs)}")
            retry = rs.calls_to_retry
            if retry > 0:  # the round would train on rankings that rest on failed calls: stop, a rerun retries them
                raise RoundNotFinal(
                    f"round {t}: {retry} judge calls failed, so the rankings of {rs.get('prompts_not_final')} prompts "
                    "are not final; the round stops before export and training; run the same command again to "
                    "retry those calls and go on"
                )
            if t >= 1:
                ie.judge(workdir, cfg, t - 1, start_path, judge_llm, eval_judge_model, progress, log)
            # -- export best vs worst
            # this round's judge by name: a resumed round under a changed judge (a new verifier version) leaves the
            # old judge's rankings beside the new ones
            ecfg = cfg.stage_config("export", out=str(run.exports_dir("pairs")), name="pairs", overwrite=True,
                                    judge_hash=rs["judge_hash"])
            es = export_run(run, ecfg)
            log(f"round {t}: export: {es.lines()[0]}")
            # -- train from the policy, with the policy as the reference (AIPO)
            if in_process_judge and judge_llm is not None and _low_memory():
                shutdown_llm(judge_llm)
                judge_llm = None
            tr_fields = cfg.stage("train")
            ts = train(es.out, model=policy_path, output_dir=str(rd / "train"),
                       resume_from_checkpoint=_has_checkpoint(rd / "train"), **tr_fields)
            log(f"round {t}: train: step {ts.get('global_step')}, loss {ts.get('train_loss')} ({time.time() - t0:.0f} s)")
            write_round_table(workdir)
        # checkpoints not evaluated yet (the last one, or any a crash left): their own engines
        for t in range(cfg.rounds) if held_out else ():
            if not ie.pending(workdir, cfg, t, start_path):
                continue
            ck = str(ie.checkpoint(workdir, t))
            eval_llm = None
            gen_fields = {**cfg.stage("generate"), "n": 1}
            if gen_fields.get("backend", "vllm") == "vllm":
                eval_llm = engine(GenerateConfig(model=ck, **gen_fields), resolve_model(ck))
            try:
                ie.sample(workdir, cfg, t, start_path, eval_llm, progress)
            finally:
                release(eval_llm)
            if in_process_judge and judge_llm is None:
                judge_llm = start_engine(judge_path, seed=0)
            ie.judge(workdir, cfg, t, start_path, judge_llm, eval_judge_model, progress, log)
    finally:
        shutdown_llm(shared["llm"])
        shutdown_llm(judge_llm)
    return IterateSummary(str(workdir), write_round_table(workdir))


def reload_weights(llm: Any, path: str) -> None:
    """Load a checkpoint's weights into a running vLLM engine in place (same architecture and tokenizer), and
    drop the prefix cache computed with the old weights."""
    llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
    llm.reset_prefix_cache()


def _has_checkpoint(out: Path) -> bool:
    return out.is_dir() and any(p.name.startswith("checkpoint-") for p in out.iterdir())


def _low_memory() -> bool:
    try:
        import torch

        return torch.cuda.is_available() and torch.cuda.device_count() == 1
    except Exception:  # noqa: BLE001
        return False


def _brief(summary: Any) -> str:
    if isinstance(summary, Mapping):
        keys = ("prompts", "ranked", "comparisons", "ties", "failures", "inconsistent", "consistency")
        return ", ".join(f"{k} {summary[k]}" for k in keys if k in summary)
    return str(summary)


def _record(workdir: Path, cfg: IterateConfig) -> None:
    path = workdir / "iterate.json"
    meta = json.loads(path.read_text()) if path.is_file() else {"commands": []}
    same = _effective(dataclasses.asdict(cfg))
    if meta.get("config") and _effective(meta["config"]) != same:
        raise PrefdataError(
            f"{workdir} was started with a different loop config; use a new workdir, or rerun with the same flags "
            f"(only --rounds may change; recorded in {path})"
        )
    meta["config"] = dataclasses.asdict(cfg)
    cmd = command_line()
    if cmd not in meta["commands"]:
        meta["commands"].append(cmd)
    atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode())


# Loop fields of earlier versions that were copies of stage fields (recorded in their iterate.json).
_OLD_SHORTCUTS = IterateConfig.MOVED_FIELDS
_TRAIN_DEFAULTS = {"loss_type": "aipo", "max_steps": -1}


def _effective(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded loop config as its stages see it, for comparing a rerun with the first run: the shortcut fields
    of earlier versions folded into their stage, LOOP_DEFAULTS applied, values equal to the stage's own default
    dropped (so `-n 4` and no -n are the same loop), and `rounds` left out (it may grow)."""
    from prefdata.options import load_class

    loop = {k: v for k, v in config.items() if k not in (*STAGE_CLASSES, *_OLD_SHORTCUTS, "rounds")}
    for name, path in STAGE_CLASSES.items():
        old = {k: config[k] for k, stage in _OLD_SHORTCUTS.items() if stage == name and k in config}
        fields = {**LOOP_DEFAULTS.get(name, {}), **old, **(config.get(name) or {})}
        if name == "train":
            defaults = _TRAIN_DEFAULTS  # the trainer's class is slow to import; these are the ones the loop named
        else:
            defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                        for f in dataclasses.fields(load_class(path))}  # fmt: skip
        loop[name] = {k: v for k, v in fields.items() if k not in defaults or defaults[k] != v}
    return loop


def round_rows(workdir: Path) -> list[dict[str, Any]]:
    """One row per finished round, derived from the round folders (nothing stored twice)."""
    rows = []
    t = 0
    while (rd := round_dir(workdir, t)).is_dir():
        tr_file = rd / "train" / TRAIN_SUMMARY
        if not tr_file.is_file():
            break
        tr = json.loads(tr_file.read_text())
        meta = RunDir(rd).read_meta()
        exp = (meta.get("stages", {}).get("export", {}).get("pairs") or {}).get("summary", {})
        lengths = exp.get("lengths") or {}
        js = exp.get("judge_stats") or {}
        last = tr.get("last_logged") or {}
        rows.append({
            "round": t,
            "pairs": exp.get("n_rows"),
            "chosen_len_mean": lengths.get("chosen_mean"),
            "rejected_len_mean": lengths.get("rejected_mean"),
            "consistency": js.get("consistency_mean"),
            "tie_rate": js.get("ties_rate"),
            "failure_rate": js.get("failures_rate"),
            "train_loss": tr.get("train_loss"),
            "reward_margin": last.get("rewards/margins"),
            "accuracy": last.get("rewards/accuracies"),
            "steps": tr.get("global_step"),
            **_eval_row(workdir, t),
        })
        t += 1
    return rows


def write_round_table(workdir: Path) -> pl.DataFrame:
    rows = round_rows(workdir)
    schema = {"round": pl.Int64, "pairs": pl.Int64, "chosen_len_mean": pl.Float64, "rejected_len_mean": pl.Float64,
              "consistency": pl.Float64, "tie_rate": pl.Float64, "failure_rate": pl.Float64, "train_loss": pl.Float64,
              "reward_margin": pl.Float64, "accuracy": pl.Float64, "steps": pl.Int64, **_eval_schema()}
    df = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    df.write_parquet(workdir / "rounds.parquet")
    # the markdown leaves out eval columns that no round has (eval off, or no previous-round eval)
    shown = df.select([c for c in df.columns if not (c.startswith("eval_") and df[c].null_count() == df.height)])
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for r in shown.iter_rows():
        lines.append("| " + " | ".join(_fmt(v) for v in r) + " |")
    (workdir / "rounds.md").write_text("# Rounds\n\n" + "\n".join(lines) + "\n")
    if df.height:
        _plot(df, workdir / "rounds.png")
    return df


def _eval_row(workdir: Path, t: int) -> dict[str, Any]:
    from prefdata.iterate_eval import row

    return row(workdir, t)


def _eval_schema() -> dict[str, Any]:
    from prefdata.iterate_eval import EVAL_SCHEMA

    return EVAL_SCHEMA


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _plot(df: pl.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_eval = "eval_len_mean" in df.columns and df["eval_len_mean"].null_count() < df.height
    fig, axes = plt.subplots(1, 4 if has_eval else 3, figsize=(17 if has_eval else 13, 3.6))
    r = df["round"].to_list()
    axes[0].plot(r, df["chosen_len_mean"].to_list(), "o-", label="chosen")
    axes[0].plot(r, df["rejected_len_mean"].to_list(), "s-", label="rejected")
    if has_eval:
        axes[0].plot(r, df["eval_len_mean"].to_list(), "^-", label="eval answers")
        _plot_eval(axes[3], df, r)
    axes[0].set_title("mean length (tokens)")
    axes[0].legend()
    axes[1].plot(r, df["consistency"].to_list(), "o-", label="consistency")
    axes[1].plot(r, df["tie_rate"].to_list(), "s-", label="tie rate")
    axes[1].set_title("judge")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    axes[2].plot(r, df["reward_margin"].to_list(), "o-", label="reward margin")
    axes[2].plot(r, df["accuracy"].to_list(), "s-", label="preference accuracy")
    axes[2].set_title("training")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(r)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _plot_eval(ax: Any, df: pl.DataFrame, r: list[int]) -> None:
    """Accuracy (verifier) or win rate vs the starting model, with its 95% interval, and the LC win rate."""
    for key, label, marker in (("eval_accuracy", "accuracy", "o-"), ("eval_win_rate", "win rate vs start", "s-")):
        vals = df[key].to_list()
        if all(v is None for v in vals):
            continue
        lo, hi = df[f"{key}_low"].to_list(), df[f"{key}_high"].to_list()
        y = [float("nan") if v is None else v for v in vals]
        err = [[0 if v is None or a is None else v - a for v, a in zip(vals, lo, strict=True)],
               [0 if v is None or b is None else b - v for v, b in zip(vals, hi, strict=True)]]
        ax.errorbar(r, y, yerr=err, fmt=marker, capsize=3, label=label)
    base = [v for v in df["eval_baseline_accuracy"].to_list() if v is not None]
    if base:
        ax.axhline(base[0], color="grey", linestyle="--", label="start accuracy")
    lc = df["eval_lc_win_rate"].to_list()
    if any(v is not None for v in lc):
        ax.plot(r, [float("nan") if v is None else v for v in lc], "^:", label="LC win rate")
    ax.set_title("eval (held-out prompts)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
