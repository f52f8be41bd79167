"""The dataset card (README.md) of an export: Hub metadata up front, provenance and statistics below.

The card is built only from run.json, the export config and the export's own counts. Secrets never reach
it: config values under secret-looking keys are masked, command lines have their secret options masked,
and a last pass removes token-shaped strings and the values of secret-looking environment variables.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from prefdata import __version__
from prefdata.secrets import redact, scrub

if TYPE_CHECKING:
    from prefdata.export.config import ExportConfig
    from prefdata.export.summary import ExportSummary

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
    """The full README.md text: data/card.md filled with this export's values."""
    from prefdata.export.tables import DROP_REASONS

    stages = meta.get("stages") or {}
    gen: dict[str, Any] = stages.get("generate") or {}
    if summary.sampler_hashes:  # only the samplers whose completions are in this dataset (not failed or other runs)
        gen = {h: e for h, e in gen.items() if h in set(summary.sampler_hashes)}
    rank_entry: dict[str, Any] = (stages.get("rank") or {}).get(summary.judge_hash) or {}
    rank_cfg: dict[str, Any] = rank_entry.get("config") or {}
    js = summary.judge_stats
    judge_model = rank_entry.get("model") or rank_cfg.get("model") or rank_cfg.get("judge_model") or "not recorded"
    commands = [c for entry in gen.values() for c in (entry or {}).get("commands") or []]
    commands += rank_entry.get("commands") or []
    values: dict[str, str | list[str]] = {
        "front_matter": yaml.safe_dump(front_matter(summary, cfg, data_files), sort_keys=False).rstrip().split("\n"),
        "title": cfg.pretty_name or f"Preference dataset ({summary.judge_hash}, {summary.pairs})",
        "shape": summary.shape,
        "shape_columns": SHAPE_COLUMNS[summary.shape],
        "format": summary.format,
        "split_rows": [f"| {s} | {n} |" for s, n in summary.splits.items()],
        "samplers": _samplers(gen),
        "judge_hash": summary.judge_hash,
        "judge_model": redact(str(judge_model)),
        "template": rank_entry.get("template") or rank_cfg.get("template") or "not recorded",
        "template_sha256": rank_entry.get("template_sha256") or "not recorded",
        "position_policy": _position_policy(rank_entry, rank_cfg),
        "strategies": _fmt_counts(js.get("strategies")),
        "rank_config": _yaml(scrub(rank_cfg)),
        "prompts_ranked": str(js.get("prompts")),
        **{k: _n(js.get(k)) for k in ("comparisons", "ties", "failures", "too_long", "truncated_inputs", "inconsistent",
                                      "no_preference")},
        **{k: _pct(js.get(k)) for k in ("ties_rate", "failures_rate", "inconsistent_rate")},
        "consistency_mean": _num(js.get("consistency_mean")),
        "pairs": summary.pairs,
        "min_margin": str(cfg.min_margin),
        "truncated_kept": "kept" if cfg.keep_truncated else "dropped",
        "inconsistent_kept": "kept" if cfg.keep_inconsistent else "dropped",
        **{k: str(getattr(summary, k)) for k in ("n_prompts", "n_ranked", "n_considered", "n_rows")},
        "drop_rows": [f"| {DROP_REASONS.get(k, k)} (`{k}`) | {v} |" for k, v in summary.drops.items()]
        or ["| nothing dropped | 0 |"],
        "lengths": _lengths(summary, plot_name),
        "warnings": ["## Warnings", "", *[f"- {redact(w)}" for w in summary.warnings], ""] if summary.warnings else [],
        "commands": [redact(c) for c in [*commands, command]],
        "version": __version__,
        "run_version": str(meta.get("prefdata_version", "unknown")),
        "export_config": _yaml(scrub({k: v for k, v in _asdict(cfg).items() if k not in ("out", "overwrite")})),
    }
    return redact("\n".join(fill(_template("card.md"), values)))


def fill(template: str, values: dict[str, str | list[str]]) -> list[str]:
    """The template's lines with `$name` filled (string.Template); a line that is only `$name` of a list value
    becomes that list's lines, so an empty list leaves no blank line behind (an export without warnings)."""
    out: list[str] = []
    for line in template.split("\n"):
        value = values.get(line[1:]) if line.startswith("$") else None
        if isinstance(value, list):
            out += value
        else:
            out.append(string.Template(line).substitute({k: v for k, v in values.items() if isinstance(v, str)}))
    return out


def _template(name: str) -> str:
    """A card template shipped with the package (prefdata/data), read as written."""
    return (Path(__file__).parents[1] / "data" / name).read_text(encoding="utf-8")


def _samplers(gen: dict[str, Any]) -> list[str]:
    """One section per sampler: its model, the recorded versions and seed, and its config (secrets masked)."""
    if not gen:
        return ["No generate stage is recorded in run.json.", ""]
    out: list[str] = []
    for sampler_hash, entry in gen.items():
        entry = entry or {}
        model = entry.get("model") or (entry.get("config") or {}).get("model") or "not recorded"
        out += [f"### Sampler `{sampler_hash}`", "", f"- Model: `{redact(str(model))}`"]
        out += [f"- {k}: `{redact(str(entry[k]))}`" for k in ("model_revision", "backend", "vllm_version", "seed")
                if entry.get(k) is not None]  # fmt: skip
        out += ["", "```yaml", _yaml(scrub(entry.get("config") or {})), "```", ""]
    return out


def _lengths(summary: ExportSummary, plot_name: str | None) -> list[str]:
    """The chosen-vs-rejected length table (data/card_lengths.md) and the plot, when there are pairs."""
    L = summary.lengths
    if not L.get("n_pairs"):
        return []
    what = "best/worst candidates per prompt" if summary.shape == "ranking" else "kept pairs"
    values: dict[str, str | list[str]] = {
        "measure": str(L["measure"]), "n_pairs": str(L["n_pairs"]), "what": what,
        **{k: f"{L[k]:.1f}" for k in ("chosen_mean", "chosen_median", "rejected_mean", "rejected_median")},
        "chosen_longer": _pct(L["chosen_longer_share"]), "chosen_shorter": _pct(L["chosen_shorter_share"]),
    }  # fmt: skip
    out = fill(_template("card_lengths.md"), values)[:-1]  # the file's last newline ends its last line
    return out + ([f"![chosen vs rejected length]({plot_name})", ""] if plot_name else [])


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
