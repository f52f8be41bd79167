"""The score driver: a reward model or verifier scores each distinct text once, batches queued across groups."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from prefdata.judges.verdict import (
    Candidate,
    PointwiseJudge,
    ScoreRequest,
    ScoreResult,
)
from prefdata.rank.config import RankConfig
from prefdata.rank.output import ContentKeys, RankingRows, progress_bar
from prefdata.rank.ranking import (
    rank_by_scores,
)
from prefdata.run.groups import Groups, Prompt
from prefdata.run.store import RunDir


# -- pointwise (reward model) ---------------------------------------------------------------------
@dataclass(eq=False)
class _ScoreGroup:
    ranked: list[Prompt]  # the group's prompts that get a ranking
    done: dict[tuple[str, str], ScoreResult]  # cached and new scores, by (prompt_id, candidate_id)
    rep: dict[tuple[str, str], str]  # each candidate's representative: the first one with its text in the prompt
    todo: list[tuple[Prompt, Candidate]]
    outstanding: int = 0


class _Scores:
    """Scores the candidates group by group. Requests wait in one queue and go to the judge in chunks of
    max(batch_size, rm_batch_size), across group borders, as they would for the whole run at once; a group is
    ranked (and dropped) once all its requests are answered."""

    def __init__(self, run: RunDir, cfg: RankConfig, judge: PointwiseJudge, jh: str):
        self.run, self.cfg, self.judge, self.jh = run, cfg, judge, jh
        self.bar: Any = None
        self.chunk = max(cfg.batch_size, cfg.rm_batch_size)
        self.pending: deque[tuple[ScoreRequest, str, _ScoreGroup]] = deque()
        self.waiting: deque[_ScoreGroup] = deque()
        self.new = self.cached = self.failures = self.truncated = self.failed_calls = self.truncated_total = 0

    def prepare(self, prompts: list[Prompt], old: pl.DataFrame | None) -> tuple[_ScoreGroup, dict[str, ContentKeys]]:
        keys = {p.pid: ContentKeys(self.jh, p) for p in prompts}
        done: dict[tuple[str, str], ScoreResult] = {}
        if old is not None:
            sel = old.select("prompt_id", "a_id", "score", "n_tokens", "truncated", "content_key")
            for pid, a, score, n_tokens, truncated, ck in sel.iter_rows():
                km = keys.get(pid)
                if km is not None and a in km.texts and ck == km.score(a):
                    done[(pid, a)] = ScoreResult(a, score, n_tokens or 0, bool(truncated))
        ranked = [p for p in prompts if p.reference is not None] if getattr(self.judge, "needs_reference", False) else prompts
        rep: dict[tuple[str, str], str] = {}
        todo = []
        for p in ranked:  # identical texts in a prompt are scored once and share the score
            first_of: dict[str, str] = {}
            for c in p.cands:
                r = first_of.setdefault(c.text, c.id)
                rep[(p.pid, c.id)] = r
                if r == c.id and (p.pid, c.id) not in done:
                    todo.append((p, c))
        return _ScoreGroup(ranked, done, rep, todo), keys

    def add(self, prompts: list[Prompt], old: pl.DataFrame | None, out: RankingRows) -> None:
        sg, keys = self.prepare(prompts, old)
        self.cached += len(sg.done)
        for p, c in sg.todo:
            self.pending.append((ScoreRequest(p.pid, p.messages, c, p.reference), keys[p.pid].score(c.id), sg))
        sg.outstanding = len(sg.todo)
        sg.todo = []
        self.waiting.append(sg)
        while len(self.pending) >= self.chunk:
            self._score()
        self._finish(out)

    def close(self, out: RankingRows) -> None:
        while self.pending:
            self._score()
        self._finish(out)

    def _score(self) -> None:
        batch = [self.pending.popleft() for _ in range(min(self.chunk, len(self.pending)))]
        res = self.judge.score([q for q, _, _ in batch])
        now = time.time()
        oks = []
        for (q, _, sg), r in zip(batch, res, strict=True):
            ok = r.score is not None and r.error is None
            oks.append(ok)
            sg.done[(q.prompt_id, q.candidate.id)] = r
            sg.outstanding -= 1
            self.failures += not ok
            self.truncated += r.truncated
        n = len(batch)
        self.run.write_judgment_columns(self.jh, {
            "prompt_id": [q.prompt_id for q, _, _ in batch], "a_id": [q.candidate.id for q, _, _ in batch], "b_id": [None] * n,
            "order": [0] * n, "verdict": ["score" if ok else "fail" for ok in oks], "winner_id": [None] * n,
            "score": [r.score for r in res], "raw": [""] * n, "error": [r.error for r in res],
            "latency_s": [r.latency_s for r in res], "attempts": [1] * n, "repaired": [False] * n,
            "n_tokens": [r.n_tokens for r in res], "truncated": [r.truncated for r in res], "judge_hash": [self.jh] * n,
            "created": [now] * n, "content_key": [key for _, key, _ in batch],
        })
        self.new += n
        self.bar.update(n)
        self.bar.set_postfix(failures=self.failures, truncated=self.truncated, refresh=False)

    def _finish(self, out: RankingRows) -> None:
        while self.waiting and self.waiting[0].outstanding == 0:
            sg = self.waiting.popleft()
            for p in sg.ranked:
                ids = [c.id for c in p.cands]
                scores: dict[str, float | None] = {}
                for cid in ids:
                    r = sg.done.get((p.pid, sg.rep[(p.pid, cid)]))
                    scores[cid] = r.score if r is not None and r.error is None else None
                ranking = rank_by_scores(ids, scores, self.cfg.min_margin)
                group = [r for r in ranking.ranks if r is not None]
                ties = sum(a == b for i, a in enumerate(group) for b in group[i + 1 :])  # pairs sharing a tie group
                reps = {sg.rep[(p.pid, c)] for c in ids}
                self.failed_calls += sum(1 for c in reps if (p.pid, c) not in sg.done or sg.done[(p.pid, c)].error is not None)
                out.add(p.pid, ranking, len(ids), len(reps), ties, sum(v is None for v in scores.values()), 0, None, 0)
            self.truncated_total += sum(1 for r in sg.done.values() if r.truncated)
            out.flush()

    def stats(self) -> dict[str, Any]:
        return {"judge_calls_new": self.new, "judge_calls_cached": self.cached, "call_failures_new": self.failures,
                "failed_calls": self.failed_calls, "too_long": 0, "truncated_inputs": self.truncated_total}


def run_scores(
    run: RunDir, cfg: RankConfig, judge: PointwiseJudge, jh: str, groups: Groups,
    old: Callable[[int], pl.DataFrame | None], out: RankingRows,
) -> dict[str, Any]:  # fmt: skip
    sc = _Scores(run, cfg, judge, jh)
    # The bar counts the calls to make, so they are counted first, group by group: the distinct texts of each prompt
    # (in polars) where nothing is cached, else the real plan (the only group of a small run is kept, not read again).
    only = groups.load(0) if groups.n_groups == 1 else None
    with_reference_only = bool(getattr(judge, "needs_reference", False))
    total = 0
    for g in range(groups.n_groups):
        if only is not None or old(g) is not None:
            total += len(sc.prepare(only if only is not None else groups.load(g), old(g))[0].todo)
        else:
            total += groups.distinct_texts(g, with_reference_only)
    sc.bar = progress_bar(cfg, total)
    try:
        for g in range(groups.n_groups):
            sc.add(only if only is not None else groups.load(g), old(g), out)
        sc.close(out)
    finally:
        sc.bar.close()
    return sc.stats()
