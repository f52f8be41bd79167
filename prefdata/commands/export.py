"""`prefdata export`: write one judge's rankings of a run as a dataset folder with its card."""

from __future__ import annotations

from pathlib import Path

import typer

from prefdata.config import build_config


def command(
    run: Path = typer.Option(..., "--run", help="Run directory with rankings."),
    out: str | None = typer.Option(None, "--out", help="Output folder [<run>/exports/<name>]."),
    judge: str | None = typer.Option(None, "--judge", help="Judge hash (rankings/<hash>); needed if several."),
    pairs: str | None = typer.Option(None, "--pairs", help="best-worst | best-vs-each | all | adjacent [best-worst]."),
    shape: str | None = typer.Option(None, "--shape", help="conversational | string | ranking | kto [conversational]."),
    fmt: str | None = typer.Option(None, "--format", help="parquet | jsonl | datasets [parquet]."),
    name: str | None = typer.Option(None, "--name", help="Export name under <run>/exports/."),
    min_margin: float | None = typer.Option(None, "--min-margin", help="Minimum score margin chosen - rejected [0]."),
    keep_truncated: bool | None = typer.Option(None, "--keep-truncated/--drop-truncated", help="Keep finish_reason=length, and pairs scored from cut reward-model inputs."),
    keep_inconsistent: bool | None = typer.Option(
        None, "--keep-inconsistent/--drop-inconsistent", help="Keep pairs whose direct comparisons disagree."
    ),
    test_size: float | None = typer.Option(None, "--test-size", help="Fraction of prompts in a test split [0]."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the split [0]."),
    license: str | None = typer.Option(None, "--license", help="Card licence [other]."),
    tag: list[str] = typer.Option([], "--tag", help="Extra card tag (repeatable)."),
    pretty_name: str | None = typer.Option(None, "--pretty-name"),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the length plot."),
    overwrite: bool | None = typer.Option(None, "--overwrite", help="Replace an existing export folder."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with the same fields."),
) -> None:
    """Turn rankings into chosen/rejected pairs (or rankings / KTO rows) with a Hub-ready dataset card."""
    from prefdata.export import ExportConfig, export_run
    from prefdata.store import RunDir

    cfg = build_config(
        ExportConfig, config, judge_hash=judge, pairs=pairs, shape=shape, format=fmt, out=out, name=name,
        min_margin=min_margin, keep_truncated=keep_truncated, keep_inconsistent=keep_inconsistent,
        test_size=test_size, seed=seed, license=license, tags=tag, pretty_name=pretty_name,
        plot=False if no_plot else None, overwrite=overwrite,
    )  # fmt: skip
    summary = export_run(RunDir(run), cfg)
    for line in summary.lines():
        typer.echo(line)
