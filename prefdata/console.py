"""What the terminal shows: prefdata's own lines and progress bars; the libraries' output goes to a log file.

vLLM's engine and worker processes, torch, transformers and Python warnings all write to file descriptors 1
and 2, some from C code or from child processes. So a stage that runs them redirects those two descriptors to
`RUN/logs/<stage>-<time>.log` for its duration (children inherit it), and prefdata writes its own lines and
bars to a saved copy of the real terminal. `--verbose` (or `PREFDATA_VERBOSE=1`) leaves everything live.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

_terminal: TextIO | None = None  # the real terminal while output is captured
_active_log: Path | None = None
_last_log: Path | None = None  # the CLI names it after the summary


def verbose() -> bool:
    return os.environ.get("PREFDATA_VERBOSE", "") not in ("", "0")


def set_verbose(on: bool) -> None:
    if on:
        os.environ["PREFDATA_VERBOSE"] = "1"


def terminal() -> TextIO:
    """Where prefdata's own lines go: the real stderr, also while library output is being captured."""
    return _terminal if _terminal is not None else sys.stderr


def say(line: str) -> None:
    """One prefdata line on the terminal (not in the log)."""
    out = terminal()
    out.write(line + "\n")
    out.flush()


def active_log() -> Path | None:
    """The log file of the stage running now, if its output is captured."""
    return _active_log


def last_log() -> Path | None:
    """The log file of the last captured stage (the CLI prints it after the summary)."""
    return _last_log


@contextlib.contextmanager
def capture_output(log_dir: Path, stage: str) -> Iterator[Path | None]:
    """Send fds 1 and 2 (this process and the processes it starts) to `log_dir/<stage>-<time>.log`.

    Nested use keeps the outer log. Yields the log path, or None when verbose or when there is no real fd.
    """
    global _terminal, _active_log, _last_log
    if verbose() or _terminal is not None:
        yield _active_log
        return
    try:
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):  # pytest capture, notebooks: nothing to redirect
        yield None
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(out_fd), os.dup(err_fd)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    term = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(log_fd, out_fd)
    os.dup2(log_fd, err_fd)
    os.close(log_fd)
    _terminal, _active_log, _last_log = term, path, path
    try:
        yield path
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved_out, out_fd)
        os.dup2(saved_err, err_fd)
        os.close(saved_out)
        os.close(saved_err)
        _terminal, _active_log = None, None
        term.close()


F = TypeVar("F", bound=Callable[..., Any])


def captured(stage: str) -> Callable[[F], F]:
    """Run a stage `f(run, ...)` with its library output captured into `run.path/logs`."""

    def deco(f: F) -> F:
        @functools.wraps(f)
        def wrapper(run: Any, *args: Any, **kwargs: Any) -> Any:
            from prefdata.errors import PrefdataError
            from prefdata.run.store import refuse_export_folder

            path = Path(getattr(run, "path", run))
            if path.exists() and not path.is_dir():  # logs/ cannot be made in a file: say so, not NotADirectoryError
                raise PrefdataError(f"{path} is a file, not a run directory; pass the run's folder to --run")
            refuse_export_folder(path)  # before its logs/ is created in there
            with capture_output(path / "logs", stage):
                return f(run, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def progress(total: int | None, desc: str, unit: str, disable: bool = False, **kw: Any) -> Any:
    """The one progress bar every stage uses (tqdm), drawn on the terminal even while output is captured."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=terminal(),
                mininterval=0.5, **kw)
