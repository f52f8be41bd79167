"""SIGTERM and SIGHUP behave as Ctrl-C does, and no process outlives prefdata.

Slurm, systemd and `timeout` stop a job with SIGTERM; a closed terminal sends SIGHUP. Python's default for both
is to die on the spot, so no `finally` runs: the in-process vLLM engine's `VLLM::EngineCore` and `VLLM::Worker`
kept running as orphans at full CPU. Here both raise `Terminated`, a `KeyboardInterrupt`, so every stage's
cleanup for Ctrl-C (keep what is done, stop the engine) runs for them too; then the CLI reaps whatever child
process is still alive (an engine interrupted while starting has no object to stop).

Python runs a signal handler only when the main thread next executes bytecode. A main thread blocked in C code
(vLLM's engine start waiting on a worker that died) would never run it, and SIGTERM, which used to kill such a
process outright, would then do nothing at all. So a watchdog thread hears the signal at the C level
(`signal.set_wakeup_fd`) and, if the process has not ended `WATCHDOG_S` seconds later, stops its children and
exits with the signal's code itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGHUP)
WATCHDOG_S = 25.0  # the stage's own cleanup (engine stop, 5 s grace, reap) ends well within this
_received: int | None = None
_wakeup_fd: int | None = None  # the watchdog's pipe (write end)
_before: set[int] = set()  # children that existed before the command (a test session's vLLM server): not ours


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl-C's KeyboardInterrupt would be."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _ignore(signum: int, frame: Any) -> None:
    """Ignore a signal without SIG_IGN: a process started meanwhile would inherit SIG_IGN (a Python child then
    ignores Ctrl-C for good), while a handler resets to the default in the child."""


def _raise(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    for sig in HANDLED:  # one is enough: a second must not cut the cleanup short (the reaper still ends all)
        signal.signal(sig, _ignore)
    raise Terminated(signum)


def install() -> tuple[Any, ...]:
    """Turn SIGTERM and SIGHUP into `Terminated` (CLI only: a library user keeps their own handlers), and start
    the watchdog that ends the process if the main thread cannot. Returns what `restore` puts back."""
    global _received, _wakeup_fd, _before
    _received = None
    _before = {p.pid for p in descendants()}
    previous = tuple(signal.getsignal(sig) for sig in (*HANDLED, signal.SIGINT))
    for sig in HANDLED:
        signal.signal(sig, _raise)
    if _wakeup_fd is None:
        read_fd, _wakeup_fd = os.pipe()
        os.set_blocking(_wakeup_fd, False)
        threading.Thread(target=_watch, args=(read_fd,), name="prefdata-signal-watchdog", daemon=True).start()
    old_fd = signal.set_wakeup_fd(_wakeup_fd, warn_on_full_buffer=False)
    return (*previous, old_fd)


def restore(saved: tuple[Any, ...]) -> None:
    """Put back the handlers `install` replaced (the CLI called in-process, as tests and notebooks do)."""
    *handlers, old_fd = saved
    for sig, handler in zip((*HANDLED, signal.SIGINT), handlers, strict=True):
        if handler is None:  # installed outside Python: the closest Python equivalent of the default
            handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, handler)
    signal.set_wakeup_fd(old_fd)


def _watch(read_fd: int) -> None:
    """Wait for SIGTERM or SIGHUP at the C level; give the main thread `WATCHDOG_S` to clean up and exit."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        signums = [b for b in data if b in HANDLED]
        if not signums:
            continue  # SIGINT and others: the main thread's KeyboardInterrupt handles them
        time.sleep(WATCHDOG_S)
        signum = signums[0]
        try:
            from prefdata.console import terminal  # the real terminal, also while fd 2 goes to the stage's log

            out = terminal()
            out.write(f"\ninterrupted by {signal.Signals(signum).name}: the stage did not stop by itself within "
                      f"{WATCHDOG_S:.0f} s; its processes were stopped; run the same command again to resume\n")
            out.flush()
            reap_children(grace_s=3.0)
        finally:
            os._exit(exit_code(signum))


def finished() -> None:
    """The work is done and reported: a late signal must not turn a finished run into a failed exit code."""
    for sig in (*HANDLED, signal.SIGINT):
        signal.signal(sig, _ignore)


def received() -> int | None:
    """The signal that stopped this process (SIGTERM, SIGHUP), None for Ctrl-C or none."""
    return _received


def exit_code(signum: int | None) -> int:
    """128 + the signal's number, as a shell reports a process killed by it (130 for Ctrl-C)."""
    return 128 + (signum or signal.SIGINT)


def descendants(pid: int | None = None) -> list[Any]:
    """Every live process below `pid` (this process by default)."""
    import psutil

    try:
        return psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.Error:
        return []


def reap(procs: list[Any], grace_s: float = 5.0) -> list[int]:
    """SIGTERM `procs`, wait up to `grace_s`, then SIGKILL what is left; returns the pids that had to be killed.

    vLLM's EngineCore was seen ignoring its SIGTERM for 30 s and more, hence the kill."""
    import psutil

    alive = [p for p in procs if _alive(p)]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    if left:
        psutil.wait_procs(left, timeout=grace_s)
    return [p.pid for p in left]


def reap_children(grace_s: float = 5.0) -> list[int]:
    """Stop every process this command started (and theirs): the CLI's last step after an interrupt or error."""
    return reap([p for p in descendants() if p.pid not in _before], grace_s)


def _alive(p: Any) -> bool:
    import psutil

    try:
        return bool(p.is_running()) and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids of `pids` still alive after waiting up to `timeout_s` (tests and the reaper's checks)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        left = []
        for pid in pids:
            try:
                if _alive(psutil.Process(pid)):
                    left.append(pid)
            except psutil.Error:
                pass
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)
