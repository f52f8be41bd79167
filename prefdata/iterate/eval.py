"""Evaluating every round of `prefdata iterate` on held-out prompts that never enter training.

The eval prompts are fixed once per workdir in `WORKDIR/eval_prompts.jsonl`: either `eval_prompts` (a file or
bundled set, its first `eval_size` rows if set), or the `eval_size` prompts of the training file with the
smallest prompt ids (kept apart by id, whatever the file order). Training slices skip every eval prompt id.

Round t's checkpoint is evaluated against the starting model in `round-t/eval/` (and, with `eval_previous`,
against round t−1's checkpoint in `round-t/eval-previous/`), with the loop's judge, greedy answers, one per
prompt. Engines are shared with the loop: the starting model's answers are sampled once, at round 0 with
round 0's policy engine, into `WORKDIR/eval-baseline/` and copied into every round's eval run; checkpoint t's
answers are sampled at the start of round t+1 by that round's policy engine (the same model), and judged
after the round's ranking. The last checkpoint is evaluated when the loop ends. All of it resumes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from prefdata.run.records import TRAIN_SUMMARY
from prefdata.run.store import RunDir, atomic_write_bytes

EVAL_FILE = "eval_prompts.jsonl"
BASELINE_DIR = "eval-baseline"

EVAL_SCHEMA = {
    "eval_prompts": pl.Int64, "eval_accuracy": pl.Float64, "eval_accuracy_low": pl.Float64,
    "eval_accuracy_high": pl.Float64, "eval_baseline_accuracy": pl.Float64, "eval_mean_score": pl.Float64,
    "eval_baseline_mean_score": pl.Float64, "eval_win_rate": pl.Float64, "eval_win_rate_low": pl.Float64,
    "eval_win_rate_high": pl.Float64, "eval_lc_win_rate": pl.Float64, "eval_len_mean": pl.Float64,
    "eval_baseline_len_mean": pl.Float64, "eval_prev_win_rate": pl.Float64, "eval_prev_lc_win_rate": pl.Float64,
}


def training_only() -> set[str]:
    """The generate settings of the training samples (marked `training_only`), never given to the greedy eval answers."""
    from prefdata.generate import GenerateConfig

    return {f.name for f in dataclasses.fields(GenerateConfig) if f.metadata.get("training_only")}


def enabled(cfg: Any) -> bool:
    return bool(cfg.eval_prompts) or bool(cfg.eval_size)


def reference_field(cfg: Any) -> str | None:
    return cfg.generate.get("reference_field")


def eval_prompt_ids(workdir: Path, cfg: Any) -> set[str]:
    """The held-out prompt ids (written once, then read back: the eval set never changes inside a workdir)."""
    from prefdata.run.prompts import load_prompts

    if not enabled(cfg):
        return set()
    path = workdir / EVAL_FILE
    if not path.is_file():
        ref = reference_field(cfg)
        if cfg.eval_prompts:
            table = load_prompts(cfg.eval_prompts, reference_field=ref).table
            if cfg.eval_size:
                table = table.head(cfg.eval_size)
        else:
            table = load_prompts(cfg.prompts, field=cfg.generate.get("prompt_field"), reference_field=ref).table
            table = table.sort("prompt_id").head(cfg.eval_size)
        lines = []
        for r in table.iter_rows(named=True):
            row: dict[str, Any] = {"messages": r["messages"]}
            if ref:
                row["reference"] = r["reference"]
            lines.append(json.dumps(row, ensure_ascii=False))
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return set(load_prompts(str(path)).table["prompt_id"].to_list())


def eval_config(workdir: Path, cfg: Any, model: str, baseline: str, judge_model: str | None = None) -> Any:
    """The eval of `model` against `baseline`: the loop's judge (and judge model) and engine, greedy, one answer per
    prompt."""
    from prefdata.eval.run import EvalConfig
    from prefdata.judges.config import judge_fields

    gen = {k: v for k, v in cfg.generate.items() if k not in training_only()}
    judging = cfg.stage_config("rank")
    carried = judge_fields(EvalConfig)  # the judge fields EvalConfig has as its own; the rest go through `rank`
    rank = {k: v for k, v in cfg.stage("rank").items() if k not in ("kinds", *carried)}
    judge = {name: getattr(judging, name) for name in carried}
    judge.update(judge=cfg.eval_judge or judging.judge, judge_model=judge_model or judging.judge_model,
                 base_url=list(judging.base_url))
    return EvalConfig(
        model=model, baseline=baseline, prompts=str(workdir / EVAL_FILE),
        reference_field="reference" if reference_field(cfg) else None,
        max_tokens=cfg.eval_max_tokens or cfg.stage_config("generate").max_tokens, generate=gen, rank=rank,
        engine=cfg.engine, ray_address=cfg.ray_address, **judge,
    )


def checkpoint(workdir: Path, t: int) -> Path:
    return workdir / f"round-{t}" / "train"


def _done(path: Path) -> bool:
    return (path / "eval.json").is_file()


def _jobs(workdir: Path, cfg: Any, t: int, start: str) -> list[tuple[Path, str]]:
    """(eval run dir, baseline model) for round t's checkpoint."""
    jobs = [(workdir / f"round-{t}" / "eval", start)]
    if cfg.eval_previous and t >= 1:
        jobs.append((workdir / f"round-{t}" / "eval-previous", str(checkpoint(workdir, t - 1))))
    return jobs


def _baseline_source(workdir: Path, t: int, baseline: str, start: str) -> RunDir:
    return RunDir(workdir / BASELINE_DIR) if baseline == start else RunDir(workdir / f"round-{t - 1}" / "eval")


def sample_start(workdir: Path, cfg: Any, start: str, llm: Any, progress: bool) -> None:
    """The starting model's eval answers, once (round 0's policy engine is that model)."""
    from prefdata.eval.run import generate_config
    from prefdata.generate import generate_run

    ecfg = eval_config(workdir, cfg, start, start)
    generate_run(RunDir(workdir / BASELINE_DIR), generate_config(ecfg, start), llm=llm, progress=progress)


def start_needs_sampling(workdir: Path, cfg: Any, start: str) -> bool:
    from prefdata.eval.run import generate_config
    from prefdata.generate import prompts_todo

    return prompts_todo(RunDir(workdir / BASELINE_DIR), generate_config(eval_config(workdir, cfg, start, start), start)) > 0


def pending(workdir: Path, cfg: Any, t: int, start: str) -> list[tuple[Path, str]]:
    """Round t's eval jobs not finished yet (empty when eval is off or round t has no checkpoint)."""
    if not enabled(cfg) or not (checkpoint(workdir, t) / TRAIN_SUMMARY).is_file():
        return []
    return [(d, b) for d, b in _jobs(workdir, cfg, t, start) if not _done(d)]


def sample(workdir: Path, cfg: Any, t: int, start: str, llm: Any, progress: bool) -> None:
    """Checkpoint t's eval answers (and the baselines', copied where they exist) into its eval runs."""
    from prefdata.eval.run import eval_generate

    for d, baseline in pending(workdir, cfg, t, start):
        ecfg = eval_config(workdir, cfg, str(checkpoint(workdir, t)), baseline)
        eval_generate(RunDir(d), ecfg, llm=llm, baseline_from=_baseline_source(workdir, t, baseline, start), progress=progress)


def judge(workdir: Path, cfg: Any, t: int, start: str, judge_llm: Any, judge_model: str | None, progress: bool,
          log: Any) -> None:
    """Judge round t's eval runs and write their reports (sampling first whatever is still missing)."""
    from prefdata.eval.run import eval_generate, eval_judge, finish

    for d, baseline in pending(workdir, cfg, t, start):
        ecfg = eval_config(workdir, cfg, str(checkpoint(workdir, t)), baseline, judge_model)
        run = RunDir(d)
        sides = eval_generate(run, ecfg, baseline_from=_baseline_source(workdir, t, baseline, start), progress=progress)
        s = finish(run, ecfg, sides, eval_judge(run, ecfg, judge_llm=judge_llm, progress=progress))
        log(f"round {t}: eval vs {s['baseline']}: {brief(s)}")


def brief(s: Mapping[str, Any]) -> str:
    parts = []
    if s.get("accuracy") is not None:
        parts.append(f"accuracy {s['accuracy']:.3f} [{s['accuracy_low']:.3f}, {s['accuracy_high']:.3f}] "
                     f"(baseline {s.get('baseline_accuracy') or 0:.3f})")
    if s.get("win_rate") is not None:
        parts.append(f"win rate {s['win_rate']:.3f} [{s['win_rate_low']:.3f}, {s['win_rate_high']:.3f}]")
    if s.get("lc_win_rate") is not None:
        parts.append(f"LC win rate {s['lc_win_rate']:.3f}")
    if s.get("len_mean") is not None:
        parts.append(f"mean length {s['len_mean']:.1f} (baseline {s.get('baseline_len_mean') or 0:.1f})")
    return ", ".join(parts) or "nothing compared"


def row(workdir: Path, t: int) -> dict[str, Any]:
    """Round t's eval columns for the rounds table (None where not evaluated)."""
    out: dict[str, Any] = dict.fromkeys(EVAL_SCHEMA)
    f = workdir / f"round-{t}" / "eval" / "eval.json"
    if f.is_file():
        s = json.loads(f.read_text())
        out.update({
            "eval_prompts": s.get("compared"), "eval_accuracy": s.get("accuracy"), "eval_accuracy_low": s.get("accuracy_low"),
            "eval_accuracy_high": s.get("accuracy_high"), "eval_baseline_accuracy": s.get("baseline_accuracy"),
            "eval_mean_score": s.get("mean_score"), "eval_baseline_mean_score": s.get("baseline_mean_score"),
            "eval_win_rate": s.get("win_rate"), "eval_win_rate_low": s.get("win_rate_low"),
            "eval_win_rate_high": s.get("win_rate_high"), "eval_lc_win_rate": s.get("lc_win_rate"),
            "eval_len_mean": s.get("len_mean"), "eval_baseline_len_mean": s.get("baseline_len_mean"),
        })
    p = workdir / f"round-{t}" / "eval-previous" / "eval.json"
    if p.is_file():
        s = json.loads(p.read_text())
        out.update({"eval_prev_win_rate": s.get("win_rate"), "eval_prev_lc_win_rate": s.get("lc_win_rate")})
    return out
