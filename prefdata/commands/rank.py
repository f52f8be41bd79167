"""`prefdata rank`: judge the candidates of a run and write judgments and rankings (see prefdata.rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = "Rank each prompt's candidates with a judge (iterative pairwise, round-robin, or reward-model scores)."


def command() -> Any:
    from prefdata.options import config_option, run_option, verb_command

    return verb_command("prefdata.rank:RankConfig", _rank, doc=HELP, before=("run",),
                        options=[run_option("Run directory written by `prefdata generate`."), config_option()])  # fmt: skip


def _rank(cfg: Any, *, run: Path) -> None:
    from prefdata.rank import EXIT_FAILURES, JudgeUnreachable, rank_run
    from prefdata.store import RunDir, check_writable

    if RunDir(run).exists():
        check_writable(run, "--run")  # judgments and rankings are written there
    try:
        s = rank_run(RunDir(run), cfg)
    except JudgeUnreachable as e:
        raise JudgeUnreachable(f"{e}: {rerun_command()}") from None
    cons = "n/a" if s["consistency"] is None else f"{s['consistency']:.1%}"
    typer.echo(
        f"ranked {s['prompts']} prompts ({s['candidates']} candidates) with {s['strategy']}, judge {s['judge_hash']}: "
        f"{s['comparisons']} comparisons ({s['judge_calls_new']} new, {s['comparisons_per_prompt']:.1f}/prompt), "
        f"{s['ties']} ties, {s['failures']} failures, {s['inconsistent']} inconsistent (consistency {cons}); "
        f"{s['with_best_and_worst']} prompts with best and worst, {s['without_preference']} without; "
        f"{s['elapsed_s']:.1f}s"
    )
    if s.get("prompts_without_reference"):
        typer.echo(f"skipped {s['prompts_without_reference']} prompts without a reference answer (the verifier needs one; "
                   "generate with --reference-field COLUMN)")
    typer.echo(f"rankings: {Path(run) / 'rankings' / s['judge_hash']}")
    if s.get("too_long"):
        typer.echo(
            f"{s['too_long']} judge prompts do not fit the judge's context (too_long); their prompts are left out of "
            "exports: use a judge with a longer context (--max-model-len for the in-process judge)", err=True,
        )
    retry = s.get("failed_calls", 0) - s.get("too_long", 0)
    if retry > 0:
        typer.echo(
            f"{retry} judge calls failed: the rankings of {s['prompts_not_final']} prompts are not final and exports "
            f"skip them; run the same command again to retry those calls: {rerun_command()}", err=True,
        )
        raise typer.Exit(EXIT_FAILURES)


def rerun_command() -> str:
    """The command as typed (secret options masked), named `prefdata` however it was started."""
    from prefdata.store import command_line

    return "prefdata " + command_line().split(" ", 1)[-1] if " " in command_line() else command_line()
