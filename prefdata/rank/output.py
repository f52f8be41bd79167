"""What a rank run writes and reads back: content keys per prompt, the rankings of a group, the summary."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from prefdata.console import progress as console_progress
from prefdata.rank.config import RankConfig
from prefdata.rank.ranking import Ranking
from prefdata.rank.sort import SortRanking
from prefdata.run.groups import Prompt
from prefdata.run.records import RANKING_SCHEMA, SORT_RANKING_SCHEMA
from prefdata.run.store import RunDir
from prefdata.summary import RecordSummary

_JSON = json.JSONEncoder(ensure_ascii=False)  # what json.dumps(..., ensure_ascii=False) builds on every call


class ContentKeys:
    """`content_key` for the calls of one prompt: the prompt's part of the JSON is hashed once and each text is
    JSON-encoded once. The bytes hashed are exactly content_key's (`[jh, msgs, ref, first, second]` dumped with
    the default ", " separator), so the keys equal those already on disk."""

    __slots__ = ("_enc", "_firsts", "_head", "texts")

    def __init__(self, jh: str, p: Prompt):
        head = _JSON.encode([jh, [[r, c] for r, c in p.messages], p.reference])
        self._head = hashlib.sha256((head[:-1] + ", ").encode())
        self._enc: dict[str, bytes] = {}
        self._firsts: dict[str, Any] = {}  # the hash state after `..., first, ` per first text: hashed once
        self.texts = {c.id: c.text for c in p.cands}

    def _text(self, cid: str) -> bytes:
        enc = self._enc.get(cid)
        if enc is None:
            enc = self._enc[cid] = _JSON.encode(self.texts[cid]).encode()
        return enc

    def pair(self, first: str, second: str) -> str:
        state = self._firsts.get(first)
        if state is None:
            state = self._firsts[first] = self._head.copy()
            state.update(self._text(first) + b", ")
        h = state.copy()
        h.update(self._text(second) + b"]")
        return h.hexdigest()[:32]

    def score(self, cid: str) -> str:
        h = self._head.copy()
        h.update(self._text(cid) + b", null]")
        return h.hexdigest()[:32]


class RankingRows:
    """The ranking rows of the current group, column by column (the list columns flat, one value per candidate),
    and the run's totals for the summary. `flush` writes the group's rows as one part (hidden until the run ends)
    and drops them. Sort rankings add SORT_RANKING_SCHEMA's columns; the others' files keep RANKING_SCHEMA alone."""

    def __init__(self, run: RunDir, jh: str, strategy: str):
        self.run, self.jh, self.strategy = run, jh, strategy
        self.schema = RANKING_SCHEMA | (SORT_RANKING_SCHEMA if strategy == "sort" else {})
        self.lists = ("candidate_ids", "ranks", "scores", *(("score_stderr",) if strategy == "sort" else ()))
        self.cols: dict[str, list[Any]] = {c: [] for c in self.schema}
        self.lens: list[int] = []  # each row's number of list values
        self.parts: list[Path] = []
        self.prompts = self.candidates = self.comparisons = self.ties = self.failures = self.inconsistent = 0
        self.with_best_and_worst = self.not_final = 0

    def add(self, pid: str, r: Ranking, n: int, calls: int, ties: int, failures: int, inconsistent: int,
            consistency: float | None, too_long: int) -> None:  # fmt: skip
        margin = None
        if r.best_id is not None and r.worst_id is not None:
            s = dict(zip(r.candidate_ids, r.scores, strict=True))
            if s.get(r.best_id) is not None and s.get(r.worst_id) is not None:
                margin = float(s[r.best_id]) - float(s[r.worst_id])  # type: ignore[arg-type]
        c = self.cols
        c["prompt_id"].append(pid)
        c["candidate_ids"].extend(r.candidate_ids)
        c["ranks"].extend(r.ranks)
        c["scores"].extend(r.scores)
        if "score_stderr" in c:
            sr = r if isinstance(r, SortRanking) else None  # a prompt with under two candidates: no strengths
            c["score_stderr"].extend(sr.stderr if sr is not None else [None] * len(r.candidate_ids))
            c["pairs_compared"].append(sr.pairs if sr is not None else 0)
            c["rounds"].append(sr.rounds if sr is not None else 0)
        self.lens.append(len(r.candidate_ids))
        for name, value in (
            ("best_id", r.best_id), ("worst_id", r.worst_id), ("complete", r.complete), ("n_candidates", n),
            ("comparisons", calls), ("ties", ties), ("failures", failures), ("inconsistent", inconsistent),
            ("consistency", consistency), ("margin", margin), ("too_long", too_long),
        ):  # fmt: skip
            c[name].append(value)
        self.prompts += 1
        self.candidates += n
        self.comparisons += calls
        self.ties += ties
        self.failures += failures
        self.inconsistent += inconsistent
        self.with_best_and_worst += r.best_id is not None
        self.not_final += failures > 0

    def flush(self) -> None:
        c = self.cols
        n = len(c["prompt_id"])
        if not n:
            return
        lens = self.lens
        lists = (
            pl.DataFrame(
                {"_row": [i for i, k in enumerate(lens) for _ in range(k)], **{name: c[name] for name in self.lists}},
                schema={"_row": pl.Int64, **{name: self.schema[name].inner for name in self.lists}},  # type: ignore[union-attr]
            )
            .group_by("_row", maintain_order=True)
            .agg(*self.lists)
        )
        if lists.height != n:  # a ranking without candidates (never written by a strategy): build the lists row by row
            lists = pl.DataFrame({name: pl.Series(name, self._rows(name, lens), dtype=self.schema[name]) for name in self.lists})
        c["judge_hash"] = [self.jh] * n
        c["strategy"] = [self.strategy] * n
        scalars = pl.DataFrame({k: v for k, v in c.items() if k not in self.lists},
                               schema={k: t for k, t in self.schema.items() if k not in self.lists})  # fmt: skip
        self.parts.append(self.run.write_ranking_part(self.jh, pl.concat([scalars, lists.select(self.lists)], how="horizontal")))
        self.cols = {c: [] for c in self.schema}
        self.lens = []

    def _rows(self, name: str, lens: list[int]) -> list[list[Any]]:
        flat, out, at = self.cols[name], [], 0
        for k in lens:
            out.append(flat[at : at + k])
            at += k
        return out


# -- output ---------------------------------------------------------------------------------------
def is_too_long(error: str | None) -> bool:
    """A call refused because the judge prompt does not fit the judge's context (it fails again on a rerun)."""
    return bool(error) and str(error).removeprefix("repair: ").startswith("too_long")


def read_rankings(run: RunDir, judge_hash: str) -> pl.DataFrame | None:
    """The rankings of one judge, one row per prompt (see `RunDir.read_rankings`)."""
    return run.read_rankings(judge_hash)


def read_judgments(run: RunDir, judge_hash: str) -> pl.DataFrame | None:
    """Every judge call of one judge (see `RunDir.read_judgments`)."""
    return run.read_judgments(judge_hash)


@dataclass(eq=False)
class RankSummary(RecordSummary):
    """The counts rank records in run.json; `lines()` for the terminal, `problems()` for what needs a rerun."""

    run: str = ""

    @property
    def calls_to_retry(self) -> int:
        """Failed judge calls a rerun asks again (too_long ones would fail again the same way)."""
        return self.record.get("failed_calls", 0) - self.record.get("too_long", 0)

    def lines(self) -> list[str]:
        s = self.record
        cons = "n/a" if s["consistency"] is None else f"{s['consistency']:.1%}"
        # two counts, both named: what has no result (a pair, or a candidate's score) and the judge calls that failed
        unit = "candidates without a score" if s["strategy"] == "scores" else "pairs without a verdict"
        failed = f"{s['failures']} {unit} ({s.get('failed_calls', 0)} failed judge calls)"
        out = [
            f"ranked {s['prompts']} prompts ({s['candidates']} candidates) with {s['strategy']}, judge {s['judge_hash']}"
            f"{' in ' + s['dtype'] if s.get('dtype') else ''}: "
            f"{s['comparisons']} comparisons ({s['judge_calls_new']} new, {s['comparisons_per_prompt']:.1f}/prompt), "
            f"{s['ties']} ties, {failed}, {s['inconsistent']} inconsistent (consistency {cons}); "
            f"{s['with_best_and_worst']} prompts with best and worst, {s['without_preference']} without; "
            f"{s['elapsed_s']:.1f}s"
        ]
        if s.get("prompts_without_reference"):
            out.append(f"skipped {s['prompts_without_reference']} prompts without a reference answer (the verifier "
                       "needs one; generate with --reference-field COLUMN)")
        return [*out, f"rankings: {Path(self.run) / 'rankings' / s['judge_hash']}"]

    def problems(self, rerun: str) -> list[str]:
        """Lines for stderr: judge prompts that do not fit, and failed calls with the command that retries them."""
        s, out = self.record, []
        if s.get("too_long"):
            out.append(f"{s['too_long']} judge prompts do not fit the judge's context (too_long); their prompts are left "
                       "out of exports: use a judge with a longer context (--max-model-len for the in-process judge)")
        if self.calls_to_retry > 0:
            other = " other" if s.get("too_long") else ""  # the summary's failed calls count the too_long ones too
            out.append(f"{self.calls_to_retry}{other} judge calls failed: the rankings of {s['prompts_not_final']} prompts are "
                       f"not final and exports skip them; run the same command again to retry those calls: {rerun}")
        return out


def summarize(out: RankingRows, stats: dict[str, Any], jh: str, strategy: str, elapsed: float) -> dict[str, Any]:
    n = out.prompts
    agreed = stats.pop("agreed_pairs", None)
    consistency = None
    if agreed is not None and agreed + out.inconsistent:
        consistency = agreed / (agreed + out.inconsistent)
    return {
        "judge_hash": jh,
        "strategy": strategy,
        "prompts": n,
        "candidates": out.candidates,
        "comparisons": out.comparisons,
        "comparisons_per_prompt": out.comparisons / n if n else 0.0,
        "ties": out.ties,
        "failures": out.failures,
        "inconsistent": out.inconsistent,
        "consistency": consistency,
        "with_best_and_worst": out.with_best_and_worst,
        "without_preference": n - out.with_best_and_worst,
        "prompts_not_final": out.not_final,
        "elapsed_s": round(elapsed, 3),
        "calls_per_s": round(stats.get("judge_calls_new", 0) / elapsed, 3) if elapsed > 0 else None,
        **stats,
    }


def progress_bar(cfg: RankConfig, total: int) -> Any:
    return console_progress(total, "rank", "cmp", disable=not cfg.progress, smoothing=0.1)
