"""The `prefdata` command: a thin layer over the library (parse, build the config, call, print a summary).

Each verb lives in `prefdata/cli/commands/<verb>.py`; its options are built from its config class
(prefdata/options.py). Expected errors (PrefdataError)
print one line and exit 2; Ctrl-C says how to resume and exits 130.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import os
import re
import signal
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from prefdata import __version__
from prefdata.errors import PrefdataError

VERBS = ("generate", "rank", "export", "push", "train", "iterate", "eval", "judge_eval", "env")

class _Verbs(TyperGroup):
    """The verbs, each built on first use: a verb's options come from its config class, and importing every
    config (the trainer's pulls in torch and transformers) would slow down every command. The listing in
    `prefdata --help` uses each verb's HELP line only."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [v.replace("_", "-") for v in VERBS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        module = cmd_name.replace("-", "_")
        if module not in VERBS:
            return None
        if self._listing:
            help_line = importlib.import_module(f"prefdata.cli.commands.{module}").HELP
            return TyperCommand(cmd_name, help=help_line)
        if cmd_name not in self.commands:
            from prefdata.options import build_verb_command

            self.commands[cmd_name] = build_verb_command(module, cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="prefdata",
    cls=_Verbs,
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
    verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' output live (any verb) instead of in RUN/logs/."),
) -> None:
    from prefdata import console

    console.set_verbose(verbose)


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """`name` from every click the installed typer may use: typer >= 0.29 vendors its own as `typer._click`,
    older typer uses the `click` package, so catching only `click.X` would miss the errors of one of them."""
    found: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


_CLICK_ERRORS = _click_classes("ClickException")
_EXITS = _click_classes("Exit")
_ABORTS = _click_classes("Abort")
_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}  # the user's disk, not a bug
_INTERRUPTED = "interrupted{by}: finished shards are kept; run the same command again to resume"


def _interrupted() -> None:
    """Ctrl-C, SIGTERM or SIGHUP: the stage's own cleanup has run; stop what is left of its children, say so
    in one line and exit 128 + the signal (130, 143, 129)."""
    from prefdata.run import interrupts

    signum = interrupts.received()
    interrupts.finished()
    interrupts.reap_children()
    by = f" by {signal.Signals(signum).name}" if signum else ""
    print("\n" + _INTERRUPTED.format(by=by), file=sys.stderr)
    sys.exit(interrupts.exit_code(signum))


_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")


def _user_os_error(e: BaseException) -> OSError | None:
    """The user's-disk OSError (full, read-only, no permission) behind `e`: `e` itself, one in its `__cause__` /
    `__context__` chain, or one a library gave only as text, as polars does when a parquet write hits ENOSPC."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in _USER_OS_ERRORS:
            return x
        m = _OS_ERROR_TEXT.search(str(x))
        code = int(m.group(1)) if m else (errno.ENOSPC if "No space left on device" in str(x) else None)
        if code in _USER_OS_ERRORS:
            return OSError(code, os.strerror(code))
        stack += [x.__cause__, x.__context__]
    return None


def _usage_error(cmd: Any, e: Any, argv: list[str]) -> None:
    """Print click's usage line, then one `error:` line (with a "did you mean" where a name was misspelled)."""
    ctx = getattr(e, "ctx", None)
    if ctx is None:  # some parser errors (an option without its value) carry no context: rebuild the verb's
        ctx = cmd.context_class(cmd, info_name="prefdata")
        verb = next((a for a in argv if not a.startswith("-")), None)
        sub = cmd.get_command(ctx, verb) if verb else None
        if sub is not None:
            ctx = sub.context_class(sub, info_name=verb, parent=ctx)
    message = e.format_message() if type(e).__name__ != "NoSuchOption" else e.message
    hint = ""
    if type(e).__name__ == "NoSuchOption":
        close = list(getattr(e, "possibilities", None) or [])
        if close:
            hint = f"; did you mean {close[0]}?"
    elif message.startswith("No such command"):
        message = message.split(". Did you mean")[0]  # some clicks add their own list; give one suggestion
        name = message.split("'")[1] if message.count("'") >= 2 else ""
        verbs = sorted(cmd.list_commands(ctx)) if hasattr(cmd, "list_commands") else []
        close = difflib.get_close_matches(name, verbs, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; verbs: {', '.join(verbs)}"
    print(ctx.get_usage(), file=sys.stderr)
    print(f"error: {message.rstrip('.')}{hint} (see '{ctx.command_path} --help')", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from prefdata.run import interrupts

    saved = interrupts.install()
    try:
        _main(argv)
    except SystemExit as e:
        if e.code not in (0, None) and interrupts.received() is None:
            interrupts.reap_children()  # an error: nothing this run started may outlive it
        raise
    finally:
        interrupts.restore(saved)


def _main(argv: list[str] | None) -> None:
    from prefdata import console
    from prefdata.run import interrupts

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:  # any verb: show the libraries' output live instead of in RUN/logs/
        argv.remove("--verbose")
        console.set_verbose(True)
    cmd = typer.main.get_command(app)
    args = argv
    try:
        rv = cmd.main(args=args, prog_name="prefdata", standalone_mode=False)
    except PrefdataError as e:
        one_line = " ".join(part.strip() for part in str(e).splitlines() if part.strip())  # e.g. a library's message
        print(f"error: {one_line}", file=sys.stderr)
        sys.exit(e.exit_code)
    except _EXITS as e:
        sys.exit(getattr(e, "exit_code", 0))
    except _CLICK_ERRORS as e:
        if hasattr(e, "ctx"):  # a UsageError: wrong flag, missing option, unknown verb, bad value
            _usage_error(cmd, e, args)
            sys.exit(2)
        print(f"error: {e.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 1) or 1)
    except (KeyboardInterrupt, *_ABORTS):
        _interrupted()
    except Exception as e:  # a full or read-only disk, also wrapped by a library (polars gives ENOSPC as text)
        user = _user_os_error(e)
        if user is None:
            interrupts.reap_children()  # a crash, as below: its traceback follows
            raise
        where = f" ({user.filename})" if user.filename else ""
        print(f"error: {user.strerror}{where}; check the permissions and free space of that location", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        if not isinstance(sys.exc_info()[1], SystemExit):
            interrupts.reap_children()  # a crash: its traceback follows, and no engine is left running
        raise
    code = rv if isinstance(rv, int) else 0
    if code == 130:  # typer >= 0.29 turns Ctrl-C into an exit code of 130
        _interrupted()
    interrupts.finished()  # from here on the work is done: a late Ctrl-C or SIGTERM does not fail it
    if console.last_log() is not None:
        print(f"log: {console.last_log()} (vLLM, torch and transformers output; --verbose shows it live)", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
