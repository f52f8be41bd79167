"""`prefdata judge-eval`: agreement of a judge with human chosen/rejected labels (see prefdata.eval.judge_eval)."""

from __future__ import annotations

from typing import Any

import typer

HELP = "Measure a judge against human preference labels: agreement, consistency under swapped order, position bias."


def command() -> Any:
    from prefdata.options import config_option, verb_command

    return verb_command("prefdata.eval.judge_eval:JudgeEvalConfig", _judge_eval, doc=HELP, options=[config_option()])


def _judge_eval(cfg: Any) -> None:
    from prefdata.eval.judge_eval import evaluate

    for line in evaluate(cfg).lines():
        typer.echo(line)
