"""Stops a local Ray cluster whose driver died without stopping it (kill -9, OOM kill).

Ray's raylet and GCS die with the driver that started them, but the raylet's agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) were seen living on as orphans after `kill -9` of the driver. This script runs beside the
driver (started by `prefdata.distributed.cluster`), reads `pid create_time` lines on stdin (the cluster's
processes), and when stdin closes (the driver exited, cleanly or not) stops those still alive and removes the
cluster's temporary directory. Standalone on purpose: it imports only psutil, so it runs without prefdata on the
path.
"""

from __future__ import annotations

import shutil
import sys

import psutil


def main() -> None:
    temp_dir = sys.argv[1] if len(sys.argv) > 1 else None
    known: dict[int, float] = {}
    for line in sys.stdin:  # until the driver closes the pipe (or dies)
        parts = line.split()
        if len(parts) == 2:
            known[int(parts[0])] = float(parts[1])
    procs = []
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 0.01:  # the same process, not a reused pid
                procs.append(p)
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=5)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
