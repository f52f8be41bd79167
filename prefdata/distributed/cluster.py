"""The Ray cluster a command runs its engines on: found or started, sized, and stopped.

`ray_cluster()` connects to `--ray-address`, else `RAY_ADDRESS`, else a cluster that `ray start` left running on
this machine; with none of those it starts a local Ray for this command only and stops it when the command ends.
A Ray started here:
- uses token auth with a random token held in this process's environment (Ray 2.60 otherwise writes
  `~/.ray/auth_token`, state that outlives the command), and no dashboard or usage stats;
- keeps its session files in a fresh temporary folder, removed afterwards;
- is watched by `reaper.py`, which stops its processes if this process dies without stopping them (kill -9: the
  raylet's agents were seen living on as orphans).

Ray's own output (the workers' stdout and stderr, forwarded with `log_to_driver`) goes to this process's fds 1
and 2, which a stage sends to the run's log file (`console.capture_output`), or the terminal with --verbose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError

# An actor that dies (its process crashed, its node went away) is restarted and its batch retried this many
# times, then the batch fails with its reason. Ray Data's default is to restart forever, so a batch that kills its
# engine every time would never end.
ACTOR_RETRIES = 2


@dataclass
class Cluster:
    address: str | None  # None: a Ray started for this command
    started_here: bool
    nodes: int
    cpus: float
    gpus: float


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PrefdataError("--engine ray needs Ray: pip install 'prefdata[ray]'") from None
    return ray


def _running_local_cluster() -> str | None:
    """The address of a cluster `ray start` left on this machine (Ray's own lookup), else None. A Ray that was
    killed leaves its address file behind: an address that does not answer is no cluster."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        address = canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - a stale address file: treat as none
        return None
    return address if address and _unanswered(address, 2.0) is None else None


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """ray.init installs a C-level handler for SIGTERM that logs a stack and aborts (exit -6), so a SIGTERM'd
    command would die without its cleanup; put prefdata's handlers (`run.interrupts`) back over it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:
                signal.signal(s, handler)


@contextlib.contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Cluster]:
    """Ray, connected or started, for the `with` block; a Ray this process already runs (a test's, a notebook's)
    is used as it is and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield _describe(ray, None, started_here=False)
        return
    from prefdata.console import verbose

    address = address or os.environ.get("RAY_ADDRESS") or _running_local_cluster()
    common: dict[str, Any] = {"log_to_driver": True, "logging_level": logging.INFO if verbose() else logging.WARNING}
    _quiet_ray_data(verbose())
    if address:
        _check_reachable(address)
        saved = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = address  # Ray prefers RAY_ADDRESS over its argument
        try:
            with _keep_signal_handlers():
                ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise PrefdataError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}; start it "
                                "with `ray start --head`, or leave out --ray-address and RAY_ADDRESS to run a local "
                                "Ray for this command") from None
        finally:
            _set_env("RAY_ADDRESS", saved)
        try:
            yield _describe(ray, address, started_here=False)
        finally:
            ray.shutdown()  # only our connection: the cluster is the user's
        return
    with _local_ray(ray, common, num_cpus) as cluster:
        yield cluster


def _unanswered(address: str, timeout_s: float) -> Exception | None:
    """Why nothing answers at HOST:PORT, or None when something does."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        return e
    return None


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT that does not answer: one line now (ray.init retries a dead address for minutes)."""
    _, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # ray://, auto: Ray's own lookup
    if (e := _unanswered(address, timeout_s)) is not None:
        raise PrefdataError(f"cannot reach the Ray cluster at {address} ({getattr(e, 'strerror', None) or e}); start it with `ray start "
                            "--head`, or leave out --ray-address and RAY_ADDRESS to run a local Ray for this command") from None


@contextlib.contextmanager
def _local_ray(ray: Any, common: dict[str, Any], num_cpus: int | None) -> Iterator[Cluster]:
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # in memory, never in ~/.ray
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reload_auth()
    temp = tempfile.mkdtemp(prefix="prefdata-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    reaper = None
    try:
        try:
            with _keep_signal_handlers():
                ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp, **common)
        except Exception as e:  # noqa: BLE001 - Ray's start failures come in many types; one line for the user
            raise PrefdataError(f"could not start a local Ray: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        reaper = _start_reaper(temp)
        yield _describe(ray, None, started_here=True)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if reaper is not None:
            _stop_reaper(reaper)
        else:
            import shutil

            shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            _set_env(k, v)
        _reload_auth()


def _reload_auth() -> None:
    """Ray caches the auth settings it read first (in C++); make it read the environment set here again."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _start_reaper(temp: str) -> subprocess.Popen[bytes]:
    """Start the watcher and hand it the cluster's processes (every process below this one now: GCS, raylet and
    its agents, the workers); it stops them if this process dies first."""
    import psutil

    script = Path(__file__).with_name("reaper.py")
    reaper = subprocess.Popen([sys.executable, str(script), temp], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    lines = []
    for p in psutil.Process().children(recursive=True):
        if p.pid == reaper.pid:
            continue
        with contextlib.suppress(psutil.Error):
            lines.append(f"{p.pid} {p.create_time()}\n")
    assert reaper.stdin is not None
    reaper.stdin.write("".join(lines).encode())
    reaper.stdin.flush()
    return reaper


def _stop_reaper(reaper: subprocess.Popen[bytes]) -> None:
    """Ray stopped cleanly: closing the pipe lets the reaper check that nothing is left and remove the temp dir."""
    with contextlib.suppress(Exception):
        assert reaper.stdin is not None
        reaper.stdin.close()
    try:
        reaper.wait(timeout=15)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _quiet_ray_data(verbose: bool) -> None:
    """Ray Data's progress bars go to the terminal only with --verbose (prefdata draws its own)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose


def _describe(ray: Any, address: str | None, started_here: bool) -> Cluster:
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return Cluster(address, started_here, nodes, float(res.get("CPU", 0)), float(res.get("GPU", 0)))


def actor_plan(cluster: Cluster, dp: int | None, tp: int) -> tuple[int, dict[str, Any]]:
    """How many engine actors and what each reserves: `tp` GPUs each, as many as the GPUs allow; on a CPU cluster
    `tp` CPUs each and one actor per node (two CPU engines on one node would bind the same cores)."""
    if cluster.gpus:
        n = dp or max(1, int(cluster.gpus) // tp)
        if n * tp > cluster.gpus:
            raise PrefdataError(f"--dp {n} x --tp {tp} needs {n * tp} GPUs; the Ray cluster has {cluster.gpus:g}")
        return n, {"num_gpus": tp}
    n = dp or max(1, cluster.nodes)
    if n * tp > cluster.cpus:
        raise PrefdataError(f"--dp {n} x --tp {tp} needs {n * tp} CPUs; the Ray cluster has {cluster.cpus:g}")
    return n, {"num_cpus": tp}


def failure_reason(e: BaseException) -> str:
    """One line saying why a Ray task or actor failed: the user exception's own message when there is one."""
    cause = getattr(e, "cause", None)
    if cause is not None and not isinstance(cause, type):
        e = cause
    text = str(e).strip().splitlines()
    first = next((line for line in text if line.strip() and not line.startswith(("Traceback", "  "))), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
