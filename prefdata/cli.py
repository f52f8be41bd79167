"""The `prefdata` command: a thin layer over the library (parse, build the config, call, print a summary).

Each verb lives in `prefdata/commands/<verb>.py` as one typer function. Expected errors (PrefdataError)
print one line and exit 2; Ctrl-C says how to resume and exits 130.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from prefdata import __version__
from prefdata.errors import PrefdataError

VERBS = ("generate", "rank", "export", "push", "train", "iterate", "judge_eval")

app = typer.Typer(
    name="prefdata",
    help="Prompts to preference datasets and aligned models: generate, rank, export, push, train, iterate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prefdata {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


for _verb in VERBS:
    try:
        _mod = importlib.import_module(f"prefdata.commands.{_verb}")
    except ModuleNotFoundError as _e:
        if _e.name != f"prefdata.commands.{_verb}":
            raise
        continue
    app.command(_verb.replace("_", "-"))(_mod.command)


def main(argv: list[str] | None = None) -> int:
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="prefdata", standalone_mode=False)
    except PrefdataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("\ninterrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    code = rv if isinstance(rv, int) else 0
    sys.exit(code)


if __name__ == "__main__":
    main()
