"""What an export reports: counts, drops by reason, chosen/rejected lengths, the judge's ranking statistics."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from prefdata.export.tables import (
    DROP_REASONS,
)


@dataclass
class ExportSummary:
    """What an export wrote and what it dropped (also recorded in run.json and the card)."""

    out: str
    judge_hash: str
    pairs: str
    shape: str
    format: str
    n_prompts: int
    n_ranked: int
    n_considered: int
    n_rows: int
    splits: dict[str, int]
    drops: dict[str, int]
    warnings: list[str]
    lengths: dict[str, Any]
    judge_stats: dict[str, Any]
    files: list[str]
    sampler_hashes: list[str] = field(default_factory=list)  # the samplers whose completions are in the rows

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        split = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        out = [
            f"exported {self.n_rows} rows ({split}) from {self.n_ranked}/{self.n_prompts} ranked prompts "
            f"[judge {self.judge_hash}, --pairs {self.pairs}, --shape {self.shape}, --format {self.format}]",
            f"  pairs considered: {self.n_considered}; dropped: {drops_text(self.drops) or 'none'}",
            f"  written to {self.out}",
        ]
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def length_summary(df: pl.DataFrame) -> dict[str, Any]:
    """Chosen vs rejected lengths over the kept pairs (tokens where every candidate has a count, else characters),
    with the exact results `statistics.mean` and `median` would give."""
    n = df.height
    if not n:
        return {"n_pairs": 0, "measure": "characters", "chosen_longer_share": None, "chosen_values": [], "rejected_values": []}
    tokens = df["c_tokens"].null_count() == 0 and df["r_tokens"].null_count() == 0
    ch = (df["c_tokens"] if tokens else df["c_chars"]).cast(pl.Int64)
    rj = (df["r_tokens"] if tokens else df["r_chars"]).cast(pl.Int64)
    return {
        "n_pairs": n,
        "measure": "tokens" if tokens else "characters",
        "chosen_mean": _mean(ch),
        "chosen_median": _median(ch),
        "rejected_mean": _mean(rj),
        "rejected_median": _median(rj),
        "chosen_longer_share": int((ch > rj).sum()) / n,
        "chosen_shorter_share": int((ch < rj).sum()) / n,
        "chosen_values": ch.to_list(),
        "rejected_values": rj.to_list(),
    }


def _mean(s: pl.Series) -> int | float:
    total, n = int(s.sum()), s.len()  # type: ignore[arg-type]
    return total // n if total % n == 0 else total / n


def _median(s: pl.Series) -> int | float:
    v = s.sort()
    n = v.len()
    if n % 2:
        return int(v[n // 2])
    return (int(v[n // 2 - 1]) + int(v[n // 2])) / 2


def ranking_stats(rankings: pl.DataFrame) -> dict[str, Any]:
    """Judge-side rates over every ranked prompt of this judge (not only the exported ones)."""

    def total(col: str) -> int | None:
        return int(rankings[col].fill_null(0).sum()) if col in rankings.columns else None

    comparisons = total("comparisons")
    out: dict[str, Any] = {
        "prompts": rankings.height,
        "comparisons": comparisons,
        "ties": total("ties"),
        "failures": total("failures"),
        "inconsistent": total("inconsistent"),
        "too_long": total("too_long"),
    }
    for k in ("ties", "failures", "inconsistent"):
        v = out[k]
        out[f"{k}_rate"] = (v / comparisons) if comparisons and v is not None else None
    if "consistency" in rankings.columns and rankings["consistency"].drop_nulls().len():
        out["consistency_mean"] = float(rankings["consistency"].drop_nulls().mean())  # type: ignore[arg-type]
    else:
        out["consistency_mean"] = None
    if "complete" in rankings.columns:
        out["complete_share"] = float(rankings["complete"].fill_null(False).mean())  # type: ignore[arg-type]
    if "strategy" in rankings.columns:
        out["strategies"] = dict(Counter(rankings["strategy"].fill_null("unknown").to_list()))
    if "best_id" in rankings.columns:
        out["no_preference"] = int(rankings["best_id"].is_null().sum())
    return out


def drops_text(drops: dict[str, int] | Counter[str]) -> str:
    order = list(DROP_REASONS)
    items = sorted(((k, v) for k, v in drops.items() if v), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    return ", ".join(f"{k} {v}" for k, v in items)


def relax_hint(drops: Counter[str]) -> str:
    hints = {
        "truncated": "--keep-truncated",
        "judge_input_truncated": "--keep-truncated (or rank again with a larger --rm-max-length)",
        "inconsistent": "--keep-inconsistent",
        "below_margin": "a lower --min-margin",
        "margin_unknown": "--min-margin 0",
        "judge_failed": "a rerun of `prefdata rank` (it retries the failed judge calls)",
    }
    useful = [h for k, h in hints.items() if drops.get(k)]
    if useful:
        return "relax with " + " or ".join(useful)
    return "the judge found no strict preferences; check the rankings (ties, failures)"
