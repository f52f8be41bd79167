"""The in-flight occupancy of a chat client: whether the calls kept its `concurrency` slots full.

`ChatClient` (openai_client) counts every call's start and end on its own `Flight`; the benchmark sets `FLIGHTS` to a
list to collect the Flight of every client made while it measures (bench/bench_judge_client.py).
"""

from __future__ import annotations

import time


class Flight:
    """In-flight occupancy of one client, counted at every call's start and end (two clock reads a call): how long
    fewer than `concurrency` calls were in flight, between the first call's start and the last one's end. A run
    that keeps the pipe full has `idle_fraction` near 0; the benchmark reads it (bench/bench_judge_client.py)."""

    __slots__ = ("concurrency", "n", "calls", "first", "last", "under_s")

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.n = self.calls = 0
        self.first = self.last = -1.0
        self.under_s = 0.0

    def _tick(self) -> None:
        now = time.monotonic()
        if self.first < 0:
            self.first = now
        elif self.n < self.concurrency:
            self.under_s += now - self.last
        self.last = now

    def start(self) -> None:
        self._tick()
        self.n += 1

    def end(self) -> None:
        self._tick()
        self.n -= 1
        self.calls += 1

    @property
    def span_s(self) -> float:
        return max(0.0, self.last - self.first)

    @property
    def idle_fraction(self) -> float:
        """The fraction of the span with fewer than `concurrency` calls in flight."""
        return self.under_s / self.span_s if self.span_s > 0 else 0.0


FLIGHTS: list[Flight] | None = None  # set to a list to collect every new client's Flight (the benchmark does)
