"""SIGTERM and SIGHUP behave as Ctrl-C does, and no process outlives prefdata.

Slurm, systemd and `timeout` stop a job with SIGTERM; a closed terminal sends SIGHUP. Python's default for both
is to die on the spot, so no `finally` runs: the in-process vLLM engine's `VLLM::EngineCore` and `VLLM::Worker`
kept running as orphans at full CPU. Here both raise `Terminated`, a `KeyboardInterrupt`, so every stage's
cleanup for Ctrl-C (keep what is done, stop the engine) runs for them too; then the CLI reaps whatever child
process is still alive (an engine interrupted while starting has no object to stop).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGHUP)
_received: int | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl-C's KeyboardInterrupt would be."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    for sig in HANDLED:  # one is enough: a second must not cut the cleanup short (the reaper still ends all)
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def install() -> None:
    """Turn SIGTERM and SIGHUP into `Terminated` (CLI only: a library user keeps their own handlers)."""
    global _received
    _received = None
    for sig in HANDLED:
        signal.signal(sig, _raise)


def finished() -> None:
    """The work is done and reported: a late signal must not turn a finished run into a failed exit code."""
    for sig in (*HANDLED, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


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
    """Stop every process this one started (and theirs): the CLI's last step after an interrupt or error."""
    return reap(descendants(), grace_s)


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
