"""The pairwise driver: every prompt of a group runs its strategy in lockstep, one judgments shard per round."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from prefdata.judges.verdict import (
    Candidate,
    PairJudge,
    PairRequest,
    Verdict,
)
from prefdata.rank.config import JudgeUnreachable, RankConfig
from prefdata.rank.output import ContentKeys, RankingRows, is_too_long, progress_bar
from prefdata.rank.ranking import (
    Pair,
    PairOutcome,
    Ranking,
    call_orders,
    combine,
    count,
    identical_outcome,
)
from prefdata.rank.strategies import STRATEGIES, comparison_bound
from prefdata.run.groups import Groups, Prompt
from prefdata.run.store import RunDir

# -- pairwise -------------------------------------------------------------------------------------
Key = tuple[str, str, str]  # (prompt_id, id shown first, id shown second)


@dataclass(eq=False)
class _State:
    p: Prompt
    gen: Any
    index: dict[str, int]
    keys: ContentKeys
    needs: list[tuple[Pair, list[Key]]] = field(default_factory=list)  # the pairs asked for, with their calls
    outcomes: dict[Pair, PairOutcome] = field(default_factory=dict)
    calls: set[Key] = field(default_factory=set)
    result: Ranking | None = None


class _Pairwise:
    """Runs the strategy of every prompt of a group in lockstep (see the module docstring); counters span groups."""

    def __init__(self, run: RunDir, cfg: RankConfig, judge: PairJudge, jh: str, strategy: str, bar: Any):
        self.run, self.cfg, self.judge, self.jh, self.strategy, self.bar = run, cfg, judge, jh, strategy, bar
        self.new_calls = self.failures = self.answered = self.cached = 0
        self.failed_calls = self.too_long = self.cycles = self.agreed = 0

    def _set_needs(self, st: _State, pairs: list[Pair]) -> None:
        out = []
        for pair in pairs:
            if st.keys.texts[pair[0]] == st.keys.texts[pair[1]]:
                out.append((pair, []))
            else:
                out.append((pair, [(st.p.pid, a, b) for a, b in call_orders(pair, self.cfg.position_bias, self.cfg.seed, st.p.pid)]))
        st.needs = out

    def _advance(self, st: _State, resolved: dict[Key, Verdict]) -> int:
        used = 0
        while st.result is None:
            for _, ks in st.needs:
                for k in ks:
                    if k not in resolved:
                        return used
            got: dict[Pair, PairOutcome] = {}
            for pair, ks in st.needs:
                got[pair] = combine(pair, [resolved[k] for k in ks]) if ks else identical_outcome(pair)
                st.calls.update(ks)
                used += len(ks)
            st.outcomes.update(got)
            try:
                self._set_needs(st, st.gen.send(got))
            except StopIteration as stop:
                st.result = stop.value
        return used

    def group(self, prompts: list[Prompt], old: pl.DataFrame | None, out: RankingRows) -> None:
        resolved: dict[Key, Verdict] = {}
        keys = {p.pid: ContentKeys(self.jh, p) for p in prompts}
        if old is not None:
            sel = old.select("prompt_id", "a_id", "b_id", "verdict", "winner_id", "content_key")
            for pid, a, b, verdict, winner, ck in sel.iter_rows():
                km = keys.get(pid)
                if km is None or a not in km.texts or b not in km.texts or ck != km.pair(a, b):
                    continue  # judged on other texts (or candidates no longer ranked): not this question
                resolved[(pid, a, b)] = Verdict(a, b, verdict, winner)  # an answered call: only its winner counts
        self.cached += len(resolved)
        states = []
        for p in prompts:
            ids = [c.id for c in p.cands]
            st = _State(p, STRATEGIES[self.strategy](ids), {c: i for i, c in enumerate(ids)}, keys[p.pid])
            try:
                self._set_needs(st, next(st.gen))
            except StopIteration as stop:
                st.result = stop.value
            states.append(st)
        for st in states:
            self.bar.update(self._advance(st, resolved))
        # Each round asks the calls of the first unfinished prompts (in order) until the batch is full; only those
        # prompts can move on after it, so only they are advanced, and finished ones leave the list. A judge that
        # runs calls concurrently (`concurrent_calls`) gets the next rounds while one is in flight, from prompts not
        # in flight, so its slots stay busy while a round drains; rounds are written in the order they were asked.
        active = [st for st in states if st.result is None]
        depth = self._depth()
        pending: deque[tuple[Future[list[Verdict]], list[tuple[Key, PairRequest]], list[_State]]] = deque()
        while active or pending:
            while active and len(pending) < depth:
                batch, taken = self._next_batch(active, resolved)
                del active[: len(taken)]
                pending.append((self._submit([r for _, r in batch], threaded=depth > 1), batch, taken))
            fut, batch, taken = pending.popleft()
            try:
                self._record(batch, fut.result(), {st.p.pid: st for st in taken}, resolved)
            except JudgeUnreachable:
                for f, b, t in pending:  # the answered calls of the rounds in flight are kept too
                    with contextlib.suppress(JudgeUnreachable):
                        self._record(b, f.result(), {st.p.pid: st for st in t}, resolved)
                raise
            for st in taken:
                self.bar.update(self._advance(st, resolved))
            active[:0] = [st for st in taken if st.result is None]
        for st in states:
            assert st.result is not None
            c = count(st.outcomes)
            failed = [resolved[k] for k in st.calls if resolved[k].verdict == "fail"]
            long_ = sum(is_too_long(v.error) for v in failed)
            self.failed_calls += len(failed)
            self.too_long += long_
            self.cycles += st.result.cycles
            self.agreed += c.agreed
            out.add(st.p.pid, st.result, len(st.p.cands), len(st.calls), c.ties, c.failures, c.inconsistent, c.consistency, long_)

    def _depth(self) -> int:
        """Rounds in flight at once: enough to cover the judge's concurrent calls, plus one; 1 for a judge that
        runs one call at a time (or is not safe to call from two threads: it says nothing)."""
        slots = getattr(self.judge, "concurrent_calls", None)
        if not isinstance(slots, int) or slots < 1:
            return 1
        return 1 + -(-slots // self.cfg.batch_size)

    def _next_batch(self, active: list[_State], resolved: dict[Key, Verdict]) -> tuple[list[tuple[Key, PairRequest]], list[_State]]:
        """The calls of the first prompts of `active` not yet resolved, until the batch is full; and those prompts."""
        batch: list[tuple[Key, PairRequest]] = []
        seen: set[Key] = set()
        visited = 0
        for st in active:
            visited += 1
            for _, ks in st.needs:
                for k in ks:
                    if k in resolved or k in seen:
                        continue
                    seen.add(k)
                    t = st.keys.texts
                    batch.append((k, PairRequest(st.p.pid, st.p.messages, Candidate(k[1], t[k[1]]), Candidate(k[2], t[k[2]]),
                                                 st.p.reference)))
            if len(batch) >= self.cfg.batch_size:
                break
        return batch, active[:visited]

    def _submit(self, requests: list[PairRequest], *, threaded: bool) -> Future[list[Verdict]]:
        """The judge's verdicts for `requests`: asked here, or (threaded) in a daemon thread while this one goes on."""
        fut: Future[list[Verdict]] = Future()

        def work() -> None:
            try:
                fut.set_result(self.judge.judge(requests))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, which raises it
                fut.set_exception(e)

        if threaded:
            threading.Thread(target=work, name="prefdata-judge-round", daemon=True).start()
        else:
            work()
        return fut

    def _record(self, batch: list[tuple[Key, PairRequest]], verdicts: list[Verdict], states_by_pid: dict[str, _State],
                resolved: dict[Key, Verdict]) -> None:  # fmt: skip
        if len(verdicts) != len(batch):
            raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(batch)} requests")
        now = time.time()
        for (_, req), v in zip(batch, verdicts, strict=True):
            if (v.a_id, v.b_id) != (req.first.id, req.second.id) or v.winner_id not in (None, v.a_id, v.b_id):
                raise RuntimeError(f"judge returned a verdict for the wrong pair: {v.a_id}/{v.b_id}")
        n = len(batch)
        ks = [k for k, _ in batch]
        sts = [states_by_pid[k[0]] for k in ks]
        self.run.write_judgment_columns(self.jh, {
            "prompt_id": [k[0] for k in ks], "a_id": [k[1] for k in ks], "b_id": [k[2] for k in ks],
            "order": [0 if st.index[k[1]] < st.index[k[2]] else 1 for k, st in zip(ks, sts, strict=True)],
            "verdict": [v.verdict for v in verdicts], "winner_id": [v.winner_id for v in verdicts],
            "score": [v.score for v in verdicts], "raw": [v.raw for v in verdicts], "error": [v.error for v in verdicts],
            "latency_s": [v.latency_s for v in verdicts], "attempts": [v.attempts for v in verdicts],
            "repaired": [v.repaired for v in verdicts], "n_tokens": [None] * n, "truncated": [None] * n,
            "judge_hash": [self.jh] * n, "created": [now] * n,
            "content_key": [st.keys.pair(k[1], k[2]) for k, st in zip(ks, sts, strict=True)],
        })
        for k, v in zip(ks, verdicts, strict=True):
            resolved[k] = v
            fail = v.verdict == "fail"
            self.failures += fail
            self.answered += not fail
        self.new_calls += n
        down = getattr(self.judge, "unavailable", None)
        if down:
            raise JudgeUnreachable(
                f"stopped early: {down}; the {self.answered} judgments answered in this run are kept, start the server "
                "and run the same command again to continue"
            )
        self.bar.set_postfix(failures=self.failures, cached=self.cached, refresh=False)

    def stats(self) -> dict[str, Any]:
        return {
            "judge_calls_new": self.new_calls, "judge_calls_cached": self.cached, "call_failures_new": self.failures,
            "failed_calls": self.failed_calls, "too_long": self.too_long, "cycles": self.cycles, "agreed_pairs": self.agreed,
        }


def _bound(groups: Groups, strategy: str, policy: str) -> int:
    """The most judge calls the run can take (the progress bar's total)."""
    sizes = groups.cands.group_by("_pos").len()["len"].value_counts()
    return sum(comparison_bound(strategy, n, policy) * k for n, k in sizes.iter_rows())


def run_pairwise(
    run: RunDir, cfg: RankConfig, judge: PairJudge, jh: str, strategy: str, groups: Groups,
    old: Callable[[int], pl.DataFrame | None], out: RankingRows,
) -> dict[str, Any]:  # fmt: skip
    bar = progress_bar(cfg, _bound(groups, strategy, cfg.position_bias))
    pw = _Pairwise(run, cfg, judge, jh, strategy, bar)
    try:
        for g in range(groups.n_groups):
            pw.group(groups.load(g), old(g), out)
            out.flush()
    finally:
        bar.close()
    return pw.stats()
