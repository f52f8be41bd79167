"""The rounds table (rounds.md, rounds.parquet) and plot, rebuilt from the round folders, and the loop's summary."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from prefdata.distributed import PLACEMENT_FIELDS
from prefdata.iterate.config import LOOP_DEFAULTS, STAGE_CLASSES, IterateConfig, round_dir
from prefdata.run.records import TRAIN_SUMMARY
from prefdata.run.store import RunDir


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


# Loop fields of earlier versions that were copies of stage fields (recorded in their iterate.json).
_OLD_SHORTCUTS = IterateConfig.MOVED_FIELDS


_TRAIN_DEFAULTS = {"loss_type": "aipo", "max_steps": -1}


def effective_config(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded loop config as its stages see it, for comparing a rerun with the first run: the shortcut fields
    of earlier versions folded into their stage, LOOP_DEFAULTS applied, values equal to the stage's own default
    dropped (so `-n 4` and no -n are the same loop), and `rounds` left out (it may grow), and so are the fields
    that only say where the stages run (PLACEMENT_FIELDS: a local and a Ray loop resume each other)."""
    from prefdata.options import load_class

    loop = {k: v for k, v in config.items() if k not in (*STAGE_CLASSES, *_OLD_SHORTCUTS, *PLACEMENT_FIELDS, "rounds")}
    for name, path in STAGE_CLASSES.items():
        old = {k: config[k] for k, stage in _OLD_SHORTCUTS.items() if stage == name and k in config}
        fields = {**LOOP_DEFAULTS.get(name, {}), **old, **(config.get(name) or {})}
        if name == "train":
            defaults = _TRAIN_DEFAULTS  # the trainer's class is slow to import; these are the ones the loop named
        else:
            defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                        for f in dataclasses.fields(load_class(path))}  # fmt: skip
        loop[name] = {k: v for k, v in fields.items()
                      if k not in PLACEMENT_FIELDS and (k not in defaults or defaults[k] != v)}  # fmt: skip
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
    from prefdata.iterate.eval import row

    return row(workdir, t)


def _eval_schema() -> dict[str, Any]:
    from prefdata.iterate.eval import EVAL_SCHEMA

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
