"""The `rank` stage: judge the candidates of every prompt and write judgments and one ranking per prompt.

Flow: read the ids of prompts and candidates (joined by prompt_id, counts checked; no text yet), build the
judge, compute the judge hash, load the answered judgments already in `judgments/<judge_hash>/` (without their
raw output), then work through the prompts in groups of `group_size`, in prompts.parquet order: read the
group's texts (a lazy scan of the candidate shards that hold them, filtered by id), run the strategy of every
prompt of the group in lockstep: each round collects the judge calls that prompts still need (up to
`batch_size`), asks the judge, and appends them as one shard before anything else happens. Then the group's
rankings are written as a hidden part and the group is dropped, so memory follows the group size, not the run.
A crash or Ctrl-C therefore loses at most the round in flight; a rerun reuses every answered call and asks
again only what is missing or failed. Rankings are derived from judgments, so they are rebuilt on every run
and become visible at the end (the parts in one shard, old ones removed). A reward model's requests queue across
groups, so its batches are those of the whole run at once.

Judgment rows (one per judge call): a_id is the candidate shown first; `order` is 0 when a_id comes first in
the prompt's candidate order (kind, index, id) and 1 when the call swapped them; verdict a|b|tie|fail is
relative to a_id/b_id and winner_id names the id. Reward-model rows score one candidate: a_id = candidate,
b_id = null, verdict "score" (or "fail"), plus n_tokens and truncated. Failed calls are kept with their raw
text and error, and are asked again by the next run. The cache is keyed on content: a row is reused only when
its `content_key` (a hash of the judge hash, the prompt, the reference and both texts in the order shown)
equals that of the candidates as they are now, so a changed text is judged again, never mixed up by id.
Rows written before content keys existed (no `content_key`) are asked again once.

Candidates with identical text in one prompt tie without a judge call (no row), so a tie can never turn into
a chosen/rejected pair with the same text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from prefdata.console import captured
from prefdata.console import progress as console_progress
from prefdata.errors import PrefdataError
from prefdata.judges.build import build_judge
from prefdata.judges.config import JudgeConfig, judge_field, to_judge_config
from prefdata.judges.verdict import (
    Candidate,
    PairJudge,
    PairRequest,
    PointwiseJudge,
    ScoreRequest,
    ScoreResult,
    Verdict,
)
from prefdata.options import identity_fields, opt
from prefdata.ranking import (
    STRATEGIES,
    Pair,
    PairOutcome,
    Ranking,
    call_orders,
    combine,
    comparison_bound,
    count,
    identical_outcome,
    rank_by_scores,
)
from prefdata.records import KIND_ORDER, RANKING_SCHEMA, stable_hash
from prefdata.sampler_choice import ALL, choose_sampler
from prefdata.store import RunDir
from prefdata.summary import RecordSummary

# `prefdata rank` exits with this when judge calls failed (or the endpoint went away): the rankings of some
# prompts are not final; a rerun of the same command retries exactly those calls.
EXIT_FAILURES = 3


class JudgeUnreachable(PrefdataError):
    """The judge endpoint stayed unreachable; the run stopped early (what was answered is kept)."""

    exit_code = EXIT_FAILURES


@dataclass
class RankConfig:
    """Config of `prefdata rank` (the same object for the library, the CLI flags and --config YAML).

    The judge's options are JudgeConfig's (declared there, carried here flat: `judge_field`). Fields that change
    results (judge, model, template, sampling, logprob mode, policy, strategy, seed for `random`, min_margin,
    kinds) enter the judge hash; transport settings (base_url, concurrency, retries, rate limit, batch sizes) do
    not, so they can change between a run and its resume.
    """

    judge: str = judge_field("judge")
    judge_model: str | None = judge_field("judge_model")
    base_url: list[str] = judge_field("base_url")
    api_key_env: str = judge_field("api_key_env")
    position_bias: str = judge_field("position_bias")
    strategy: str | None = opt(None, "iterative | round-robin | scores; none: iterative (LLM judge) or scores (reward model).", identity=True)
    seed: int = judge_field("seed")
    temperature: float = judge_field("temperature")
    max_tokens: int | None = judge_field("max_tokens")
    logprobs: bool = judge_field("logprobs")
    tie_band: float = judge_field("tie_band")
    min_margin: float = opt(0.0, "Scores: candidates within this score difference tie.", identity=True)
    kinds: list[str] = opt([], "Rank only candidates of this kind (repeatable); none: all.", flag=("--kind", "--kinds"), identity=True)
    sampler: str | None = opt(None, "Rank only this sampler's candidates (its hash; a unique prefix will do); needed when "
                              "the run holds several samplers. `all`: rank them together (pairs may mix samplers).", identity=True)
    concurrency: int = judge_field("concurrency")
    max_retries: int = judge_field("max_retries")
    backoff_s: float = judge_field("backoff_s")
    requests_per_minute: float | None = judge_field("requests_per_minute")
    timeout_s: float = judge_field("timeout_s")
    unreachable_after: int = judge_field("unreachable_after")
    batch_size: int = opt(64, "Judge calls per round and per judgments shard (the most a crash can lose).", identity=False)
    group_size: int = opt(4096, "Prompts read, judged and written together, then dropped: memory follows this, not the "
                          "size of the run.", identity=False)
    rm_batch_size: int = judge_field("rm_batch_size")
    rm_max_length: int | None = judge_field("rm_max_length")
    rm_backend: str = judge_field("rm_backend")
    max_model_len: int = judge_field("max_model_len")
    dtype: str = judge_field("dtype")
    progress: bool = opt(True, "Show the progress bar.", identity=False)

    def __post_init__(self) -> None:
        if self.strategy is not None and self.strategy not in (*STRATEGIES, "scores"):
            raise ValueError(f"strategy must be iterative, round-robin or scores, got {self.strategy!r}")
        if self.batch_size < 1 or self.group_size < 1:
            raise ValueError("batch_size, concurrency, rm_batch_size and group_size must be at least 1")
        if self.min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {self.min_margin}")
        self.judge_config()  # the judge's own checks

    def judge_config(self) -> JudgeConfig:
        return to_judge_config(self)


def content_key(
    judge_hash: str, messages: Any, reference: str | None, first_text: str, second_text: str | None
) -> str:
    """What a judgment depends on besides the judge: the prompt, the reference and the texts in the order shown.

    `messages`: (role, content) pairs or {"role", "content"} dicts. second_text is None for a score.
    """
    msgs = [[m["role"], m["content"]] if isinstance(m, dict) else [m[0], m[1]] for m in messages]
    blob = json.dumps([judge_hash, msgs, reference, first_text, second_text], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class _Prompt:
    pid: str
    messages: tuple[tuple[str, str], ...]
    reference: str | None
    cands: list[Candidate]


def judge_identity(cfg: RankConfig, judge: PairJudge | PointwiseJudge, strategy: str, sampler: str | None = None
                   ) -> dict[str, Any]:  # fmt: skip
    """What the judge hash is made of: the judge's own record (the fields marked identity="judge" enter there)
    and every field marked identity=True, as it applies to this kind of judge (None where it does not).
    `sampler` enters only when the run holds several samplers, so a one-sampler run's hash is unchanged."""
    pointwise = strategy == "scores"
    applied = {
        "strategy": strategy,  # resolved: none means iterative or scores by the judge's kind
        "position_bias": None if pointwise else cfg.position_bias,
        "seed": cfg.seed if (cfg.position_bias == "random" and not pointwise) else None,
        "min_margin": cfg.min_margin if pointwise else None,
        "kinds": sorted(cfg.kinds),
        "sampler": sampler,
    }
    identity: dict[str, Any] = {"judge": judge.config()}
    order = list(applied)  # run.json shows the identity in this order (the hash sorts its keys)
    for name in sorted(identity_fields(RankConfig), key=lambda n: order.index(n) if n in order else len(order)):
        value = applied.get(name, getattr(cfg, name))
        if name != "sampler" or value is not None:
            identity[name] = value
    return identity


# -- reading the run in groups of prompts ---------------------------------------------------------
class _Groups:
    """The prompts that have candidates, in prompts.parquet order, cut into groups of `size` prompts.

    Built from ids alone (prompt_id, candidate_id, kind, index of every candidate: no text is read), with the checks
    of the whole run done up front: missing columns, one id with two texts, kinds, orphan prompt ids. `load(g)`
    reads one group's prompts and candidate texts (a lazy scan of the shards that hold them, filtered by id).
    """

    def __init__(self, run: RunDir, kinds: list[str], size: int, sampler: str | None = None):
        self.run, self.size = run, size
        if not run.prompts_file.is_file():
            run.read_prompts()  # raises the one-line error
        head = pl.read_parquet_schema(run.prompts_file)
        self.has_ref = "reference" in head
        no_ref = pl.col("reference").is_null() if self.has_ref else pl.lit(True)
        prompts = pl.scan_parquet(run.prompts_file).select("prompt_id", no_ref.alias("_no_ref")).with_row_index("_row").collect()
        self.n_prompts_file = prompts.height
        if not run.candidate_shards():
            raise PrefdataError(f"{run.path} has no candidates; run `prefdata generate --run {run.path}` first")
        need = {"prompt_id", "candidate_id", "text", "kind", "index"}
        missing_cols = need - run.candidate_column_names()
        if missing_cols:
            raise PrefdataError(f"candidates in {run.path} lack column(s) {', '.join(sorted(missing_cols))}")
        scan = run.scan_candidate_shards(["prompt_id", "candidate_id", "kind", "index", "sampler_hash"])
        assert scan is not None
        cands = scan.collect()
        run.check_candidate_texts(cands)
        cands = cands.unique(subset=["candidate_id"], keep="first", maintain_order=True)
        if cands.height == 0:
            raise PrefdataError(f"{run.path} has no candidates; run `prefdata generate --run {run.path}` first")
        if kinds:
            cands = cands.filter(pl.col("kind").is_in(kinds))
            if cands.height == 0:
                raise PrefdataError(f"no candidates of kind {', '.join(kinds)} in {run.path}")
        # one sampler at a time (prefdata.sampler_choice): `sampler` is set only when the run holds several, and
        # then enters the judge hash, so each sampler's rankings are kept apart
        samplers = sorted(cands["sampler_hash"].drop_nulls().unique().to_list())
        chosen = choose_sampler(samplers, sampler, run.read_meta(), str(run.path), "rank")
        self.sampler = chosen if len(samplers) > 1 else None
        self.samplers = [chosen] if chosen else samplers
        if self.sampler is not None:
            cands = cands.filter(pl.col("sampler_hash") == self.sampler)
        cands = cands.drop("sampler_hash")
        with_cands = cands.select("prompt_id").unique()
        orphans = with_cands.join(prompts.select("prompt_id"), on="prompt_id", how="anti")["prompt_id"]
        if orphans.len():
            raise PrefdataError(
                f"{orphans.len()} prompt id(s) in candidates are not in prompts.parquet (e.g. {orphans.min()}); "
                "the run directory is inconsistent"
            )
        self.prompts = (
            prompts.filter(pl.col("prompt_id").is_in(with_cands["prompt_id"].implode()))
            .unique(subset=["prompt_id"], keep="first", maintain_order=True)
            .with_row_index("_pos")
        )
        self.cands = cands.join(self.prompts.select("prompt_id", "_pos"), on="prompt_id").sort("_pos", maintain_order=True)
        self.n_prompts = self.prompts.height
        self.n_candidates = self.cands.height
        self.n_groups = -(-self.n_prompts // size)
        self.without_reference = int(self.prompts["_no_ref"].sum())

    def bound(self, strategy: str, policy: str) -> int:
        """The most judge calls the run can take (the progress bar's total)."""
        sizes = self.cands.group_by("_pos").len()["len"].value_counts()
        return sum(comparison_bound(strategy, n, policy) * k for n, k in sizes.iter_rows())

    def _span(self, g: int) -> tuple[int, int]:
        return g * self.size, min((g + 1) * self.size, self.n_prompts)

    def _cands(self, g: int) -> pl.DataFrame:
        lo, hi = self._span(g)
        pos = self.cands["_pos"]
        a, b = int(pos.search_sorted(lo, "left")), int(pos.search_sorted(hi, "left"))
        return self.cands.slice(a, b - a)

    def distinct_texts(self, g: int, with_reference_only: bool) -> int:
        """The number of distinct texts in each of group g's prompts, summed, counted in polars (no Python strings):
        what a scores run asks when nothing is cached. `with_reference_only`: count only prompts with a reference."""
        cands = self._cands(g)
        if with_reference_only:
            cands = cands.join(self.prompts.filter(~pl.col("_no_ref")).select("_pos"), on="_pos", how="semi")
        if cands.height == 0:
            return 0
        scan = self.run.scan_candidate_shards(["prompt_id", "candidate_id", "text"], cands["_shard"].unique().to_list())
        assert scan is not None
        texts = scan.filter(pl.col("candidate_id").is_in(cands["candidate_id"].implode()))
        return int(texts.select(pl.struct("prompt_id", pl.col("text").fill_null("")).n_unique()).collect().item())

    def load(self, g: int) -> list[_Prompt]:
        """Group g's prompts with their candidates in a fixed order (kind, index, id)."""
        lo, hi = self._span(g)
        cands = self._cands(g)
        scan = self.run.scan_candidate_shards(["candidate_id", "text"], cands["_shard"].unique().to_list())
        assert scan is not None
        texts = scan.filter(pl.col("candidate_id").is_in(cands["candidate_id"].implode())).collect()
        text_of = dict(zip(texts["candidate_id"].to_list(), texts["text"].to_list(), strict=True))
        by_prompt: dict[str, list[tuple[int, str, int, str]]] = {}
        for pid, cid, kind, index in cands.select("prompt_id", "candidate_id", "kind", "index").iter_rows():
            by_prompt.setdefault(pid, []).append((KIND_ORDER.get(kind, 9), kind, index, cid))
        rows = self.prompts["_row"].slice(lo, hi - lo)
        first, last = int(rows.min()), int(rows.max())  # type: ignore[arg-type]
        cols = ["prompt_id", "messages", *(["reference"] if self.has_ref else [])]
        prompts = (
            pl.scan_parquet(self.run.prompts_file).with_row_index("_row").slice(first, last - first + 1)
            .filter(pl.col("_row").is_in(rows.implode())).select(cols).collect()
        )
        out: list[_Prompt] = []
        for row in prompts.iter_rows(named=True):
            order = sorted(by_prompt[row["prompt_id"]])
            msgs = tuple((m["role"], m["content"]) for m in row["messages"])
            out.append(_Prompt(row["prompt_id"], msgs, row["reference"] if self.has_ref else None,
                               [Candidate(cid, text_of[cid] or "") for _, _, _, cid in order]))
        return out

    def split(self, old: pl.DataFrame | None) -> Callable[[int], pl.DataFrame | None]:
        """Judgment rows (of prompts in the run) by group, each group's in `created` order."""
        if old is None or old.height == 0:
            return lambda g: None
        df = (
            old.lazy()
            .join(self.prompts.lazy().select("prompt_id", "_pos"), on="prompt_id")
            .with_columns((pl.col("_pos") // self.size).alias("_g"))
            .sort(["_g", "created"], maintain_order=True)
            .drop("_pos", "created")
            .collect()
        )
        gs = df["_g"]

        def part(g: int) -> pl.DataFrame | None:
            a, b = int(gs.search_sorted(g, "left")), int(gs.search_sorted(g + 1, "left"))
            return df.slice(a, b - a) if b > a else None

        return part


def prompts_with_candidates(run: RunDir, kinds: list[str]) -> list[_Prompt]:
    """Every prompt with its candidates in a fixed order (kind, index, id); join and counts checked. Holds the whole
    run in memory: `rank` itself reads it group by group."""
    groups = _Groups(run, kinds, sys.maxsize, sampler=ALL)
    return [p for g in range(groups.n_groups) for p in groups.load(g)]


_JSON = json.JSONEncoder(ensure_ascii=False)  # what json.dumps(..., ensure_ascii=False) builds on every call


class _Keys:
    """`content_key` for the calls of one prompt: the prompt's part of the JSON is hashed once and each text is
    JSON-encoded once. The bytes hashed are exactly content_key's (`[jh, msgs, ref, first, second]` dumped with
    the default ", " separator), so the keys equal those already on disk."""

    __slots__ = ("_enc", "_firsts", "_head", "texts")

    def __init__(self, jh: str, p: _Prompt):
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


class _Out:
    """The ranking rows of the current group, column by column (the three list columns flat, one value per
    candidate), and the run's totals for the summary. `flush` writes the group's rows as one part (hidden until the
    run ends) and drops them."""

    LISTS = ("candidate_ids", "ranks", "scores")

    def __init__(self, run: RunDir, jh: str, strategy: str):
        self.run, self.jh, self.strategy = run, jh, strategy
        self.cols: dict[str, list[Any]] = {c: [] for c in RANKING_SCHEMA}
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
                {"_row": [i for i, k in enumerate(lens) for _ in range(k)], **{name: c[name] for name in self.LISTS}},
                schema={"_row": pl.Int64, **{name: RANKING_SCHEMA[name].inner for name in self.LISTS}},  # type: ignore[union-attr]
            )
            .group_by("_row", maintain_order=True)
            .agg(*self.LISTS)
        )
        if lists.height != n:  # a ranking without candidates (never written by a strategy): build the lists row by row
            lists = pl.DataFrame({name: pl.Series(name, self._rows(name, lens), dtype=RANKING_SCHEMA[name]) for name in self.LISTS})
        c["judge_hash"] = [self.jh] * n
        c["strategy"] = [self.strategy] * n
        scalars = pl.DataFrame({k: v for k, v in c.items() if k not in self.LISTS},
                               schema={k: t for k, t in RANKING_SCHEMA.items() if k not in self.LISTS})  # fmt: skip
        self.parts.append(self.run.write_ranking_part(self.jh, pl.concat([scalars, lists.select(self.LISTS)], how="horizontal")))
        self.cols = {c: [] for c in RANKING_SCHEMA}
        self.lens = []

    def _rows(self, name: str, lens: list[int]) -> list[list[Any]]:
        flat, out, at = self.cols[name], [], 0
        for k in lens:
            out.append(flat[at : at + k])
            at += k
        return out


@captured("rank")
def rank_run(run: RunDir, cfg: RankConfig, llm: Any = None, *, judge: PairJudge | PointwiseJudge | None = None) -> RankSummary:
    """Rank every prompt of `run`; returns the summary whose record is also written to run.json.

    `llm`: an existing in-process `vllm.LLM` to judge with. `judge`: a ready judge object (tests, the iterate
    loop); when given, the config's judge fields only label the run.
    """
    run.require()
    with run.stage_lock("rank"):
        return _rank_run(run, cfg, llm, judge)


def _rank_run(run: RunDir, cfg: RankConfig, llm: Any, judge: PairJudge | PointwiseJudge | None) -> RankSummary:
    groups = _Groups(run, cfg.kinds, cfg.group_size, cfg.sampler)
    if judge is None:
        judge = build_judge(cfg, llm, n_items=groups.n_candidates)
    pointwise = isinstance(judge, PointwiseJudge) and not isinstance(judge, PairJudge)
    strategy = cfg.strategy or ("scores" if pointwise else "iterative")
    if pointwise != (strategy == "scores"):
        raise PrefdataError(
            "strategy scores needs a reward-model judge" if strategy == "scores"
            else f"a reward-model judge ranks by score; use --strategy scores, not {strategy}"
        )
    identity = judge_identity(cfg, judge, strategy, groups.sampler)  # one of several samplers: its own judge hash
    jh = stable_hash(identity)
    t0 = time.monotonic()
    cols = (["prompt_id", "a_id", "verdict", "score", "n_tokens", "truncated", "created", "content_key"] if pointwise
            else ["prompt_id", "a_id", "b_id", "verdict", "winner_id", "created", "content_key"])
    old = run.read_judgments(jh, columns=cols)
    if old is not None:  # the rows a rerun may reuse: answered, with a content key (raw output is never read)
        old = old.filter((pl.col("verdict") != "fail") & pl.col("content_key").is_not_null())
    old_of = groups.split(old)
    del old  # only the split copy stays
    out = _Out(run, jh, strategy)
    run.drop_ranking_parts(jh)  # left by a run that was killed
    try:
        if pointwise:
            stats = _run_scores(run, cfg, judge, jh, groups, old_of, out)  # type: ignore[arg-type]
        else:
            stats = _run_pairwise(run, cfg, judge, jh, strategy, groups, old_of, out)  # type: ignore[arg-type]
        run.replace_rankings(jh, out.parts)
    finally:
        run.drop_ranking_parts(jh)
    elapsed = time.monotonic() - t0
    summary = _summarize(out, stats, jh, strategy, elapsed)
    summary["prompts_without_candidates"] = groups.n_prompts_file - groups.n_prompts
    summary["dtype"] = judge_dtype(judge)  # an in-process judge's compute dtype (None: a server or a verifier)
    if getattr(judge, "needs_reference", False):
        summary["prompts_without_reference"] = groups.without_reference
    template = getattr(judge, "template", None)
    run.record_stage("rank", jh, {
        "judge_hash": jh,
        "config": dataclasses.asdict(cfg),
        "identity": identity,
        "template": getattr(template, "name", None),
        "template_sha256": getattr(template, "sha256", None),
        "rm_backend": getattr(judge, "backend", None),  # which engine scored (auto picks by size)
        "samplers": groups.samplers,  # whose candidates were ranked (export picks rankings by it)
        "dtype": judge_dtype(judge),
        "counts": summary,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return RankSummary(summary, run=str(run.path))


def judge_dtype(judge: Any) -> str | None:
    """The dtype an in-process judge computes in (None for a server or a verifier)."""
    for obj in (judge, getattr(judge, "backend", None)):
        dtype = getattr(obj, "dtype", None) or getattr(getattr(obj, "llm", None), "prefdata_dtype", None)
        if isinstance(dtype, str):
            return dtype
    torch_dtype = getattr(judge, "torch_dtype", None)
    return str(torch_dtype).removeprefix("torch.") if torch_dtype is not None else None


# -- pairwise -------------------------------------------------------------------------------------
Key = tuple[str, str, str]  # (prompt_id, id shown first, id shown second)


@dataclass(eq=False)
class _State:
    p: _Prompt
    gen: Any
    index: dict[str, int]
    keys: _Keys
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

    def group(self, prompts: list[_Prompt], old: pl.DataFrame | None, out: _Out) -> None:
        resolved: dict[Key, Verdict] = {}
        keys = {p.pid: _Keys(self.jh, p) for p in prompts}
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
        # prompts can move on after it, so only they are advanced, and finished ones leave the list.
        active = [st for st in states if st.result is None]
        while active:
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
            self._ask(batch, states_by_pid={st.p.pid: st for st in active[:visited]}, resolved=resolved)
            head = active[:visited]
            for st in head:
                self.bar.update(self._advance(st, resolved))
            active[:visited] = [st for st in head if st.result is None]
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

    def _ask(self, batch: list[tuple[Key, PairRequest]], states_by_pid: dict[str, _State], resolved: dict[Key, Verdict]) -> None:
        verdicts = self.judge.judge([r for _, r in batch])
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


def _run_pairwise(
    run: RunDir, cfg: RankConfig, judge: PairJudge, jh: str, strategy: str, groups: _Groups,
    old: Callable[[int], pl.DataFrame | None], out: _Out,
) -> dict[str, Any]:  # fmt: skip
    bar = _progress(cfg, groups.bound(strategy, cfg.position_bias))
    pw = _Pairwise(run, cfg, judge, jh, strategy, bar)
    try:
        for g in range(groups.n_groups):
            pw.group(groups.load(g), old(g), out)
            out.flush()
    finally:
        bar.close()
    return pw.stats()


# -- pointwise (reward model) ---------------------------------------------------------------------
@dataclass(eq=False)
class _ScoreGroup:
    ranked: list[_Prompt]  # the group's prompts that get a ranking
    done: dict[tuple[str, str], ScoreResult]  # cached and new scores, by (prompt_id, candidate_id)
    rep: dict[tuple[str, str], str]  # each candidate's representative: the first one with its text in the prompt
    todo: list[tuple[_Prompt, Candidate]]
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

    def prepare(self, prompts: list[_Prompt], old: pl.DataFrame | None) -> tuple[_ScoreGroup, dict[str, _Keys]]:
        keys = {p.pid: _Keys(self.jh, p) for p in prompts}
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

    def add(self, prompts: list[_Prompt], old: pl.DataFrame | None, out: _Out) -> None:
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

    def close(self, out: _Out) -> None:
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

    def _finish(self, out: _Out) -> None:
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


def _run_scores(
    run: RunDir, cfg: RankConfig, judge: PointwiseJudge, jh: str, groups: _Groups,
    old: Callable[[int], pl.DataFrame | None], out: _Out,
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
    sc.bar = _progress(cfg, total)
    try:
        for g in range(groups.n_groups):
            sc.add(only if only is not None else groups.load(g), old(g), out)
        sc.close(out)
    finally:
        sc.bar.close()
    return sc.stats()


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


def _summarize(out: _Out, stats: dict[str, Any], jh: str, strategy: str, elapsed: float) -> dict[str, Any]:
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


def _progress(cfg: RankConfig, total: int) -> Any:
    return console_progress(total, "rank", "cmp", disable=not cfg.progress, smoothing=0.1)


__all__ = ["RankConfig", "build_judge", "prompts_with_candidates", "rank_run", "read_judgments", "read_rankings"]
