"""The dataset card (README.md) of an export: Hub metadata up front, provenance and statistics below.

The card is built only from run.json, the export config and the export's own counts. Secrets never reach
it: config values under secret-looking keys are masked, command lines have their secret options masked,
and a last pass removes token-shaped strings and the values of secret-looking environment variables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from prefdata import __version__
from prefdata.secrets import redact, scrub

if TYPE_CHECKING:
    from prefdata.export import ExportConfig, ExportSummary

SHAPE_COLUMNS = {
    "conversational": "`prompt` (list of messages), `chosen` and `rejected` (each a one-message assistant list)",
    "string": "`prompt`, `chosen` and `rejected` as plain strings",
    "ranking": "one row per prompt: `prompt`, `completions` best first, with aligned `candidate_ids`, `ranks` "
    "(1 = best, equal = tied) and `scores`",
    "kto": "unpaired rows: `prompt`, `completion` (one-message assistant list) and `label` (true = desirable)",
}


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    for limit, name in bounds:
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "10M<n<100M"


def front_matter(summary: ExportSummary, cfg: ExportConfig, data_files: dict[str, str]) -> dict[str, Any]:
    tags = ["prefdata", "preference", "synthetic"]
    tags += ["kto"] if cfg.shape == "kto" else ["dpo"]
    tags += [t for t in cfg.tags if t not in tags]
    fm: dict[str, Any] = {
        "license": cfg.license,
        "tags": tags,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(summary.n_rows)],
        "configs": [{"config_name": "default", "data_files": [{"split": s, "path": p} for s, p in data_files.items()]}],
    }
    if cfg.pretty_name:
        fm["pretty_name"] = cfg.pretty_name
    return fm


def build_card(
    *,
    summary: ExportSummary,
    cfg: ExportConfig,
    meta: dict[str, Any],
    data_files: dict[str, str],
    command: str,
    plot_name: str | None,
) -> str:
    """The full README.md text."""
    from prefdata.pairs import DROP_REASONS

    stages = meta.get("stages") or {}
    gen: dict[str, Any] = stages.get("generate") or {}
    if summary.sampler_hashes:  # only the samplers whose completions are in this dataset (not failed or other runs)
        gen = {h: e for h, e in gen.items() if h in set(summary.sampler_hashes)}
    rank_entry: dict[str, Any] = (stages.get("rank") or {}).get(summary.judge_hash) or {}
    rank_cfg: dict[str, Any] = rank_entry.get("config") or {}
    js = summary.judge_stats
    L = summary.lengths

    title = cfg.pretty_name or f"Preference dataset ({summary.judge_hash}, {summary.pairs})"
    out: list[str] = ["---", yaml.safe_dump(front_matter(summary, cfg, data_files), sort_keys=False).rstrip(), "---", ""]
    out += [f"# {title}", ""]
    out += [
        "Preference data made with prefdata: completions sampled per "
        "prompt, ranked by a judge, and turned into pairs. Every number below comes from the run's own records.",
        "",
        "## Structure",
        "",
        f"- Shape: **{summary.shape}**: {SHAPE_COLUMNS[summary.shape]}.",
        "- Every row keeps its ids (`prompt_id`, candidate ids) and provenance (`judge_hash`, `sampler_hash`, "
        "ranking `strategy`, ranks and scores), so it can be traced back to the run directory.",
        f"- Files: {summary.format}; splits by `prompt_id` (no prompt is in two splits):",
        "",
        "| split | rows |",
        "|---|---|",
    ]
    out += [f"| {s} | {n} |" for s, n in summary.splits.items()]
    out += ["", "```python", "from datasets import load_dataset", 'ds = load_dataset("<this repo or folder>")', "```", ""]

    # -- models and configs
    out += ["## Sampling", ""]
    if not gen:
        out += ["No generate stage is recorded in run.json.", ""]
    for sampler_hash, entry in gen.items():
        entry = entry or {}
        model = entry.get("model") or (entry.get("config") or {}).get("model") or "not recorded"
        out += [f"### Sampler `{sampler_hash}`", "", f"- Model: `{redact(str(model))}`"]
        for k in ("model_revision", "backend", "vllm_version", "seed"):
            if entry.get(k) is not None:
                out.append(f"- {k}: `{redact(str(entry[k]))}`")
        out += ["", "```yaml", _yaml(scrub(entry.get("config") or {})), "```", ""]

    out += ["## Judging", ""]
    judge_model = rank_entry.get("model") or rank_cfg.get("model") or rank_cfg.get("judge_model") or "not recorded"
    out += [
        f"- Judge config hash: `{summary.judge_hash}`",
        f"- Judge model: `{redact(str(judge_model))}`",
        f"- Template: `{rank_entry.get('template') or rank_cfg.get('template') or 'not recorded'}`, sha256 "
        f"`{rank_entry.get('template_sha256') or 'not recorded'}`",
        f"- Position-bias policy: {_position_policy(rank_entry, rank_cfg)}",
        f"- Ranking strategy: {_fmt_counts(js.get('strategies'))}",
        "",
        "```yaml",
        _yaml(scrub(rank_cfg)),
        "```",
        "",
        "### Judge statistics (all ranked prompts of this judge)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| prompts ranked | {js.get('prompts')} |",
        f"| judge comparisons | {_n(js.get('comparisons'))} |",
        f"| ties | {_n(js.get('ties'))} ({_pct(js.get('ties_rate'))}) |",
        f"| failures | {_n(js.get('failures'))} ({_pct(js.get('failures_rate'))}) |",
        f"| judge prompts longer than the judge's context (`too_long`) | {_n(js.get('too_long'))} |",
        f"| reward-model inputs cut to the model's max length (scored without their start) | "
        f"{_n(js.get('truncated_inputs'))} |",
        f"| inconsistent (verdict changed when the order was swapped) | {_n(js.get('inconsistent'))} "
        f"({_pct(js.get('inconsistent_rate'))}) |",
        f"| mean consistency | {_num(js.get('consistency_mean'))} |",
        f"| prompts with no strict best/worst | {_n(js.get('no_preference'))} |",
        "",
    ]

    # -- pairs and filters
    out += [
        "## Pair selection",
        "",
        f"- Strategy: `--pairs {summary.pairs}`; minimum margin {cfg.min_margin}; truncated completions and "
        f"pairs scored from cut reward-model inputs {'kept' if cfg.keep_truncated else 'dropped'}; inconsistent pairs {'kept' if cfg.keep_inconsistent else 'dropped'}; "
        "ties and identical texts always dropped (chosen is never the same text as rejected).",
        f"- Prompts in the run: {summary.n_prompts}; ranked: {summary.n_ranked}; pairs considered: "
        f"{summary.n_considered}; rows written: {summary.n_rows}.",
        "",
        "| dropped because | count |",
        "|---|---|",
    ]
    out += [f"| {DROP_REASONS.get(k, k)} (`{k}`) | {v} |" for k, v in summary.drops.items()] or []
    if not summary.drops:
        out.append("| nothing dropped | 0 |")
    out.append("")

    # -- lengths
    out += ["## Chosen vs rejected length", ""]
    if L.get("n_pairs"):
        out += [
            f"Measured in {L['measure']} over {L['n_pairs']} "
            + ("best/worst candidates per prompt" if summary.shape == "ranking" else "kept pairs")
            + ".",
            "",
            "| | mean | median |",
            "|---|---|---|",
            f"| chosen | {L['chosen_mean']:.1f} | {L['chosen_median']:.1f} |",
            f"| rejected | {L['rejected_mean']:.1f} | {L['rejected_median']:.1f} |",
            "",
            f"Chosen is longer in {_pct(L['chosen_longer_share'])} of pairs and shorter in {_pct(L['chosen_shorter_share'])}.",
            "",
        ]
        if plot_name:
            out += [f"![chosen vs rejected length]({plot_name})", ""]
    if summary.warnings:
        out += ["## Warnings", ""] + [f"- {redact(w)}" for w in summary.warnings] + [""]

    # -- reproduce
    out += ["## Reproduce", "", "```bash"]
    for entry in gen.values():
        out += [redact(c) for c in (entry or {}).get("commands") or []]
    out += [redact(c) for c in rank_entry.get("commands") or []]
    out += [redact(command), "```", ""]
    out += [
        f"- prefdata version: `{__version__}` (run created with `{meta.get('prefdata_version', 'unknown')}`)",
        "",
        "Export config:",
        "",
        "```yaml",
        _yaml(scrub({k: v for k, v in _asdict(cfg).items() if k not in ("out", "overwrite")})),
        "```",
        "",
    ]
    return redact("\n".join(out))


def plot_lengths(path: Path, chosen: list[int], rejected: list[int], measure: str) -> None:
    """Overlaid histograms of chosen and rejected lengths (PNG, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    hi = max(max(chosen, default=1), max(rejected, default=1), 1)
    bins = min(40, max(5, hi))
    ax.hist([chosen, rejected], bins=bins, range=(0, hi), label=["chosen", "rejected"], alpha=0.8)
    ax.set_xlabel(f"length ({measure})")
    ax.set_ylabel("pairs")
    ax.legend()
    ax.set_title("chosen vs rejected length")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _position_policy(entry: dict[str, Any], cfg: dict[str, Any]) -> str:
    for src in (cfg, entry):
        for k, v in src.items():
            if re.search(r"position|bias|swap|order", k, re.I) and not isinstance(v, dict | list):
                return f"`{k}: {v}`" if v is not None else f"`{k}`: none (pointwise scores have no answer order)"
    return "not recorded in run.json"


def _yaml(obj: Any) -> str:
    if not obj:
        return "{}"
    return yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=True).rstrip()


def _asdict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _n(x: int | None) -> str:
    return "n/a" if x is None else str(x)


def _fmt_counts(d: dict[str, int] | None) -> str:
    return ", ".join(f"{k} ({v})" for k, v in d.items()) if d else "not recorded"
