"""`prefdata export`'s config: pair strategy, dataset shape, format, filters and split."""

from __future__ import annotations

from dataclasses import dataclass

from prefdata.errors import PrefdataError
from prefdata.export.tables import (
    PAIR_STRATEGIES,
)
from prefdata.export.writers import FORMATS
from prefdata.options import opt

SHAPES = ("conversational", "string", "ranking", "kto")


@dataclass
class ExportConfig:
    """How to turn one judge's rankings into a dataset. Defaults give the safest pairs: best vs worst,
    no ties, no inconsistent pairs, no truncated completions."""

    judge_hash: str | None = opt(None, "Which rankings/<judge_hash>/ to export; none picks the only one (an error lists "
                                 "them if several).", flag=("--judge", "--judge-hash"))
    sampler: str | None = opt(None, "Export the rankings of this sampler (its hash; a unique prefix will do) where the run "
                              "holds several. `all`: also rankings that pool several samplers (pairs may mix them).")
    pairs: str = opt("best-worst", "best-worst (one pair per prompt) | best-vs-each | all (every ordered pair) | adjacent "
                     "(neighbours in the ranking); all but best-worst need a complete ranking (sort, round-robin or scores).")
    shape: str = opt("conversational", "conversational (prompt/chosen/rejected as message lists) | string (plain strings; "
                     "single-turn prompts only) | ranking (one row per prompt with every candidate, rank and score) | kto "
                     "(unpaired prompt/completion/label rows taken from the kept pairs).")
    format: str = opt("parquet", "parquet (data/*.parquet) | jsonl (data/*.jsonl) | datasets (a `save_to_disk` folder).")
    out: str | None = opt(None, "Output folder; none: <run>/exports/<name>.")
    name: str | None = opt(None, "Export name under <run>/exports/; none: derived from the judge and strategy.")
    min_margin: float = opt(0.0, "Minimum score difference chosen - rejected; for sort rankings in standard errors of "
                            "the strength gap, sqrt(se_chosen² + se_rejected²) (1 halves inverted pairs: bench/RESULTS.md); "
                            "0 disables it (pairs without scores are then kept).")
    keep_truncated: bool = opt(False, "Keep completions that hit the token limit (finish_reason=length), and pairs whose "
                               "reward-model score came from an input cut to --rm-max-length.",
                               flag="--keep-truncated/--drop-truncated")
    keep_inconsistent: bool = opt(False, "Keep pairs whose direct comparisons did not all prefer the chosen candidate.",
                                  flag="--keep-inconsistent/--drop-inconsistent")
    test_size: float = opt(0.0, "Fraction of prompts (not rows) in a test split; 0 writes train only.")
    seed: int = opt(0, "Seed of the test split.")
    license: str = opt("other", "Dataset card licence; `other` because the right licence depends on the prompts and the "
                       "model: set it.")
    tags: list[str] = opt([], "Extra dataset card tag (repeatable).", flag=("--tag", "--tags"))
    pretty_name: str | None = opt(None, "Dataset card title.")
    length_bias_threshold: float = opt(0.6, "Warn when chosen is longer than rejected in more than this share of pairs.")
    max_rows_per_file: int = opt(200_000, "Rows per data file (keeps Hub files well under their size limits).")
    overwrite: bool = opt(False, "Replace an existing export folder (only one that prefdata wrote).")
    plot: bool = opt(True, "Write the chosen/rejected length plot (PNG) next to the card.")

    def __post_init__(self) -> None:
        _choice("--pairs", self.pairs, PAIR_STRATEGIES)
        _choice("--shape", self.shape, SHAPES)
        _choice("--format", self.format, FORMATS)
        if not 0.0 <= self.test_size < 1.0:
            raise PrefdataError(f"--test-size must be a fraction in [0, 1), got {self.test_size}")
        if self.min_margin < 0:
            raise PrefdataError(f"--min-margin must be >= 0, got {self.min_margin}")
        if self.max_rows_per_file < 1:
            raise PrefdataError(f"max_rows_per_file must be >= 1, got {self.max_rows_per_file}")


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PrefdataError(f"unknown {flag} {value!r}; choose one of {', '.join(allowed)}")
