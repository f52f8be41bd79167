"""The `rank` stage: judge the candidates of every prompt and write judgments and one ranking per prompt.

Flow: read prompts and candidates (joined by prompt_id, counts checked), build the judge, compute the judge
hash, load the judgments already in `judgments/<judge_hash>/`, then run the strategy of every prompt in
lockstep: each round collects the judge calls that prompts still need (up to `batch_size`), asks the judge,
and appends them as one shard before anything else happens. A crash or Ctrl-C therefore loses at most
the round in flight; a rerun reuses every answered call and asks again only what is missing or failed.
Rankings are derived from judgments, so they are rebuilt and written (one shard, old ones removed) at the end.

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
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from prefdata.config import check_env_name, check_range
from prefdata.console import captured
from prefdata.console import progress as console_progress
from prefdata.errors import PrefdataError
from prefdata.judges.verdict import (
    Candidate,
    PairJudge,
    PairRequest,
    PointwiseJudge,
    ScoreRequest,
    ScoreResult,
    Verdict,
)
from prefdata.options import opt
from prefdata.ranking import (
    POLICIES,
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
from prefdata.records import KIND_ORDER, stable_hash
from prefdata.store import RunDir

# `prefdata rank` exits with this when judge calls failed (or the endpoint went away): the rankings of some
# prompts are not final; a rerun of the same command retries exactly those calls.
EXIT_FAILURES = 3


class JudgeUnreachable(PrefdataError):
    """The judge endpoint stayed unreachable; the run stopped early (what was answered is kept)."""

    exit_code = EXIT_FAILURES


@dataclass
class RankConfig:
    """Config of `prefdata rank` (the same object for the library, the CLI flags and --config YAML).

    Fields that change results (judge, model, template, sampling, logprob mode, policy, strategy, seed for
    `random`, min_margin, kinds) enter the judge hash; transport settings (base_url, concurrency, retries,
    rate limit, batch sizes) do not, so they can change between a run and its resume.
    """

    judge: str = opt("mt-bench-pair-v2", "Template name (judges/), template .yaml path, reward-model folder, verify:number, "
                     "verify:exact, or python:FILE.py:FUNCTION.")
    judge_model: str | None = opt(None, "Served model name (OpenAI), or model path for in-process vLLM; none: the first "
                                  "served model / the demo model.")
    base_url: list[str] = opt([], "OpenAI-compatible server URL (repeat to spread load); none: in-process vLLM.")
    api_key_env: str = opt("OPENAI_API_KEY", "Environment variable holding the API key (the key itself is never recorded).")
    position_bias: str = opt("both", f"Order policy: {' | '.join(POLICIES)}.")
    strategy: str | None = opt(None, "iterative | round-robin | scores; none: iterative (LLM judge) or scores (reward model).")
    seed: int = opt(0, "Seed of the `random` order policy and the vLLM engine.")
    temperature: float = opt(0.0, "Judge sampling temperature.")
    max_tokens: int | None = opt(None, "Judge reply limit; none: the template's.")
    logprobs: bool = opt(False, "One-token verdict read from log-probs (the template needs logprob_labels).")
    tie_band: float = opt(0.05, "Logprob mode: |P(first) - 0.5| <= band is a tie.")
    min_margin: float = opt(0.0, "Scores: candidates within this score difference tie.")
    kinds: list[str] = opt([], "Rank only candidates of this kind (repeatable); none: all.", flag=("--kind", "--kinds"))
    concurrency: int = opt(8, "OpenAI: requests in flight.")
    max_retries: int = opt(4, "OpenAI: retries per call (connection errors, 5xx, 429, garbage replies).")
    backoff_s: float = opt(0.5, "OpenAI: first retry delay in seconds, doubled each time.")
    requests_per_minute: float | None = opt(None, "OpenAI: requests per minute over all URLs.",
                                            flag=("--rpm", "--requests-per-minute"))
    timeout_s: float = opt(120.0, "OpenAI: seconds per request.")
    unreachable_after: int = opt(8, "OpenAI: stop the run after this many connection failures in a row.")
    batch_size: int = opt(64, "Judge calls per round and per judgments shard (the most a crash can lose).")
    rm_batch_size: int = opt(16, "Reward-model forward batch (halved on out-of-memory).")
    rm_max_length: int | None = opt(None, "Reward-model input limit; longer inputs are cut and flagged.")
    rm_backend: str = opt("auto", "Reward-model engine: auto (vllm from 2000 candidates when installed, else hf) | hf "
                          "(transformers) | vllm (pooling runner); see rm_backend_for.")
    max_model_len: int = opt(4096, "In-process vLLM judge context.")
    progress: bool = opt(True, "Show the progress bar.")

    def __post_init__(self) -> None:
        if self.position_bias not in POLICIES:
            raise ValueError(f"position_bias must be one of {', '.join(POLICIES)}, got {self.position_bias!r}")
        if self.strategy is not None and self.strategy not in (*STRATEGIES, "scores"):
            raise ValueError(f"strategy must be iterative, round-robin or scores, got {self.strategy!r}")
        if self.batch_size < 1 or self.concurrency < 1 or self.rm_batch_size < 1:
            raise ValueError("batch_size, concurrency and rm_batch_size must be at least 1")
        if not 0.0 <= self.tie_band < 0.5:
            raise ValueError(f"tie_band must be in [0, 0.5), got {self.tie_band}")
        if self.rm_backend not in ("auto", "hf", "vllm"):
            raise ValueError(f"rm_backend must be auto, hf or vllm, got {self.rm_backend!r}")
        if self.min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {self.min_margin}")
        check_env_name("--api-key-env", self.api_key_env)
        check_range("--temperature", self.temperature, 0)
        for flag, value in (("--max-tokens", self.max_tokens), ("--rm-max-length", self.rm_max_length),
                            ("max_model_len", self.max_model_len)):
            check_range(flag, value, 1)
        check_range("--max-retries", self.max_retries, 0)
        check_range("--rpm", self.requests_per_minute, 0, lo_open=True)
        check_range("timeout_s", self.timeout_s, 0, lo_open=True)
        check_range("backoff_s", self.backoff_s, 0)


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


# Measured (bench/RESULTS.md 3.4): vLLM's pooling runner scores about 7x faster than transformers' best batch once
# started, but its engine start (about 3 minutes on the 2-core CPU) makes it slower below ~750 candidates.
RM_VLLM_MIN_ITEMS = 2000


def rm_backend_for(cfg: RankConfig, n_items: int | None) -> str:
    """`auto`: vLLM when it is installed and there are enough candidates to pay for its engine start, else hf."""
    if cfg.rm_backend != "auto":
        return cfg.rm_backend
    if n_items is None or n_items < RM_VLLM_MIN_ITEMS:
        return "hf"
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def build_judge(cfg: RankConfig, llm: Any = None, n_items: int | None = None) -> PairJudge | PointwiseJudge:
    """The judge named by the config: a verifier, a reward-model folder, or a template over OpenAI / in-process vLLM.

    `n_items`: how many candidates will be scored (picks the reward-model backend under rm_backend auto)."""
    from prefdata.judges.reward_model import RewardModelJudge, check_reward_model_dir, is_reward_model_dir
    from prefdata.judges.verifier import build_verifier, is_verifier

    if is_verifier(cfg.judge):
        if cfg.base_url or cfg.logprobs:
            raise PrefdataError(f"{cfg.judge} is a verifier, run in this process; drop --base-url/--logprobs")
        return build_verifier(cfg.judge)
    if is_reward_model_dir(cfg.judge):
        check_reward_model_dir(cfg.judge)
        if cfg.base_url or cfg.logprobs:
            raise PrefdataError(f"{cfg.judge} is a reward-model folder, scored in this process; drop --base-url/--logprobs")
        if rm_backend_for(cfg, n_items) == "vllm":
            from prefdata.judges.reward_model_vllm import VLLMRewardModelJudge

            try:
                return VLLMRewardModelJudge(cfg.judge, max_length=cfg.rm_max_length, seed=cfg.seed, llm=llm)
            except ImportError as e:
                raise PrefdataError("--rm-backend vllm needs vLLM (pip install prefdata[cpu] or [gpu]); or use --rm-backend hf") from e
        return RewardModelJudge(cfg.judge, batch_size=cfg.rm_batch_size, max_length=cfg.rm_max_length)
    from prefdata.judges.llm_judge import ChatBackend, LLMPairJudge
    from prefdata.judges.templates import load_template

    template = load_template(cfg.judge)
    backend: ChatBackend
    if cfg.base_url:
        from prefdata.judges.openai_judge import OpenAIBackend

        ob = OpenAIBackend(
            list(cfg.base_url), cfg.judge_model, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
            max_retries=cfg.max_retries, backoff_s=cfg.backoff_s, requests_per_minute=cfg.requests_per_minute,
            timeout_s=cfg.timeout_s, unreachable_after=cfg.unreachable_after,
        )
        ob.preflight()
        backend = ob
    else:
        from prefdata.judges.vllm_judge import VLLMBackend

        if llm is not None:
            name = cfg.judge_model or str(getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "model", "llm"))
            backend = VLLMBackend(llm, name)
        else:
            from prefdata.models import resolve_model

            try:
                backend = VLLMBackend.load(resolve_model(cfg.judge_model), seed=cfg.seed, max_model_len=cfg.max_model_len)
            except ImportError as e:
                raise PrefdataError("an in-process judge needs vLLM (pip install prefdata[cpu] or [gpu]), or pass --base-url") from e
    return LLMPairJudge(
        template, backend, temperature=cfg.temperature, max_tokens=cfg.max_tokens, logprobs=cfg.logprobs,
        tie_band=cfg.tie_band,
    )


def judge_identity(cfg: RankConfig, judge: PairJudge | PointwiseJudge, strategy: str) -> dict[str, Any]:
    pointwise = strategy == "scores"
    return {
        "judge": judge.config(),
        "strategy": strategy,
        "position_bias": None if pointwise else cfg.position_bias,
        "seed": cfg.seed if (cfg.position_bias == "random" and not pointwise) else None,
        "min_margin": cfg.min_margin if pointwise else None,
        "kinds": sorted(cfg.kinds),
    }


def prompts_with_candidates(run: RunDir, kinds: list[str]) -> list[_Prompt]:
    """Prompts with their candidates in a fixed order (kind, index, id); join and counts checked."""
    prompts = run.read_prompts()
    cands = run.read_candidates(unique=True)
    if cands is None or cands.height == 0:
        raise PrefdataError(f"{run.path} has no candidates; run `prefdata generate --run {run.path}` first")
    need = {"prompt_id", "candidate_id", "text", "kind", "index"}
    missing_cols = need - set(cands.columns)
    if missing_cols:
        raise PrefdataError(f"candidates in {run.path} lack column(s) {', '.join(sorted(missing_cols))}")
    if kinds:
        cands = cands.filter(pl.col("kind").is_in(kinds))
        if cands.height == 0:
            raise PrefdataError(f"no candidates of kind {', '.join(kinds)} in {run.path}")
    known = set(prompts["prompt_id"].to_list())
    orphans = set(cands["prompt_id"].to_list()) - known
    if orphans:
        raise PrefdataError(
            f"{len(orphans)} prompt id(s) in candidates are not in prompts.parquet (e.g. {sorted(orphans)[0]}); "
            "the run directory is inconsistent"
        )
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in cands.select(["prompt_id", "candidate_id", "text", "kind", "index"]).iter_rows(named=True):
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    has_ref = "reference" in prompts.columns
    out: list[_Prompt] = []
    for row in prompts.iter_rows(named=True):
        rows = by_prompt.get(row["prompt_id"])
        if not rows:
            continue
        rows.sort(key=lambda r: (KIND_ORDER.get(r["kind"], 9), r["kind"], r["index"], r["candidate_id"]))
        msgs = tuple((m["role"], m["content"]) for m in row["messages"])
        out.append(_Prompt(row["prompt_id"], msgs, row["reference"] if has_ref else None,
                           [Candidate(r["candidate_id"], r["text"] or "") for r in rows]))
    return out


@captured("rank")
def rank_run(run: RunDir, cfg: RankConfig, llm: Any = None, *, judge: PairJudge | PointwiseJudge | None = None) -> dict[str, Any]:
    """Rank every prompt of `run`; returns the summary that is also recorded in run.json.

    `llm`: an existing in-process `vllm.LLM` to judge with. `judge`: a ready judge object (tests, the iterate
    loop); when given, the config's judge fields only label the run.
    """
    run.require()
    with run.stage_lock("rank"):
        return _rank_run(run, cfg, llm, judge)


def _rank_run(run: RunDir, cfg: RankConfig, llm: Any, judge: PairJudge | PointwiseJudge | None) -> dict[str, Any]:
    prompts = prompts_with_candidates(run, cfg.kinds)
    if judge is None:
        judge = build_judge(cfg, llm, n_items=sum(len(p.cands) for p in prompts))
    pointwise = isinstance(judge, PointwiseJudge) and not isinstance(judge, PairJudge)
    strategy = cfg.strategy or ("scores" if pointwise else "iterative")
    if pointwise != (strategy == "scores"):
        raise PrefdataError(
            "strategy scores needs a reward-model judge" if strategy == "scores"
            else f"a reward-model judge ranks by score; use --strategy scores, not {strategy}"
        )
    identity = judge_identity(cfg, judge, strategy)
    jh = stable_hash(identity)
    t0 = time.monotonic()
    old = run.read_judgments(jh)
    if pointwise:
        rows, stats = _run_scores(run, cfg, judge, jh, prompts, old)  # type: ignore[arg-type]
    else:
        rows, stats = _run_pairwise(run, cfg, judge, jh, strategy, prompts, old)  # type: ignore[arg-type]
    run.write_rankings(jh, rows)
    elapsed = time.monotonic() - t0
    summary = _summarize(rows, stats, jh, strategy, elapsed)
    summary["prompts_without_candidates"] = run.read_prompts().height - len(prompts)
    if getattr(judge, "needs_reference", False):
        summary["prompts_without_reference"] = sum(p.reference is None for p in prompts)
    template = getattr(judge, "template", None)
    run.record_stage("rank", jh, {
        "judge_hash": jh,
        "config": dataclasses.asdict(cfg),
        "identity": identity,
        "template": getattr(template, "name", None),
        "template_sha256": getattr(template, "sha256", None),
        "rm_backend": getattr(judge, "backend", None),  # which engine scored (auto picks by size)
        "counts": summary,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return summary


# -- pairwise -------------------------------------------------------------------------------------
@dataclass
class _State:
    p: _Prompt
    gen: Any
    index: dict[str, int]
    text: dict[str, str]
    needs: list[Pair] = field(default_factory=list)
    outcomes: dict[Pair, PairOutcome] = field(default_factory=dict)
    calls: set[tuple[str, str, str]] = field(default_factory=set)
    result: Ranking | None = None


def _run_pairwise(
    run: RunDir, cfg: RankConfig, judge: PairJudge, jh: str, strategy: str, prompts: list[_Prompt], old: pl.DataFrame | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    resolved: dict[tuple[str, str, str], Verdict] = {}
    by_pid = {p.pid: p for p in prompts}
    texts = {(p.pid, c.id): c.text for p in prompts for c in p.cands}

    def ckey(k: tuple[str, str, str]) -> str:
        p = by_pid[k[0]]
        return content_key(jh, p.messages, p.reference, texts[(k[0], k[1])], texts[(k[0], k[2])])

    if old is not None and old.height and "content_key" in old.columns:
        ok = old.filter((pl.col("verdict") != "fail") & pl.col("content_key").is_not_null()).sort("created")
        for r in ok.iter_rows(named=True):
            k = (r["prompt_id"], r["a_id"], r["b_id"])
            if (k[0], k[1]) not in texts or (k[0], k[2]) not in texts or r["content_key"] != ckey(k):
                continue  # judged on other texts (or candidates no longer ranked): not this question
            resolved[k] = Verdict(
                r["a_id"], r["b_id"], r["verdict"], r["winner_id"], r["score"], r["raw"] or "", r["error"], r["latency_s"] or 0.0
            )
    cached_at_start = len(resolved)
    states = []
    for p in prompts:
        ids = [c.id for c in p.cands]
        st = _State(p, STRATEGIES[strategy](ids), {c: i for i, c in enumerate(ids)}, {c.id: c.text for c in p.cands})
        try:
            st.needs = next(st.gen)
        except StopIteration as stop:
            st.result = stop.value
        states.append(st)

    def keys_for(st: _State, pair: Pair) -> list[tuple[str, str, str]]:
        if st.text[pair[0]] == st.text[pair[1]]:
            return []
        return [(st.p.pid, a, b) for a, b in call_orders(pair, cfg.position_bias, cfg.seed, st.p.pid)]

    def advance(st: _State) -> int:
        used = 0
        while st.result is None:
            if any(k not in resolved for pair in st.needs for k in keys_for(st, pair)):
                return used
            got: dict[Pair, PairOutcome] = {}
            for pair in st.needs:
                ks = keys_for(st, pair)
                got[pair] = combine(pair, [resolved[k] for k in ks]) if ks else identical_outcome(pair)
                st.calls.update(ks)
                used += len(ks)
            st.outcomes.update(got)
            try:
                st.needs = st.gen.send(got)
            except StopIteration as stop:
                st.result = stop.value
        return used

    index_of = {st.p.pid: st.index for st in states}
    total = sum(comparison_bound(strategy, len(p.cands), cfg.position_bias) for p in prompts)
    bar = _progress(cfg, total)
    new_calls = failures = 0
    try:
        for st in states:
            bar.update(advance(st))
        while True:
            active = [st for st in states if st.result is None]
            if not active:
                break
            batch: list[tuple[tuple[str, str, str], PairRequest]] = []
            seen: set[tuple[str, str, str]] = set()
            for st in active:
                for pair in st.needs:
                    for k in keys_for(st, pair):
                        if k in resolved or k in seen:
                            continue
                        seen.add(k)
                        req = PairRequest(st.p.pid, st.p.messages, Candidate(k[1], st.text[k[1]]), Candidate(k[2], st.text[k[2]]),
                                          st.p.reference)
                        batch.append((k, req))
                if len(batch) >= cfg.batch_size:
                    break
            verdicts = judge.judge([r for _, r in batch])
            if len(verdicts) != len(batch):
                raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(batch)} requests")
            now = time.time()
            shard = []
            for (k, req), v in zip(batch, verdicts, strict=True):
                if (v.a_id, v.b_id) != (req.first.id, req.second.id) or v.winner_id not in (None, v.a_id, v.b_id):
                    raise RuntimeError(f"judge returned a verdict for the wrong pair: {v.a_id}/{v.b_id}")
                order = 0 if index_of[k[0]][k[1]] < index_of[k[0]][k[2]] else 1
                shard.append({
                    "prompt_id": k[0], "a_id": k[1], "b_id": k[2], "order": order, "verdict": v.verdict, "winner_id": v.winner_id,
                    "score": v.score, "raw": v.raw, "error": v.error, "latency_s": v.latency_s, "attempts": v.attempts,
                    "repaired": v.repaired, "n_tokens": None, "truncated": None, "judge_hash": jh, "created": now,
                    "content_key": ckey(k),
                })
                resolved[k] = v
                failures += v.verdict == "fail"
            run.write_judgments(jh, shard)
            new_calls += len(batch)
            down = getattr(judge, "unavailable", None)
            if down:
                answered = sum(v.verdict != "fail" for v in resolved.values()) - cached_at_start
                raise JudgeUnreachable(
                    f"stopped early: {down}; the {answered} judgments answered in this run are kept, start the server "
                    "and run the same command again to continue"
                )
            bar.set_postfix(failures=failures, cached=cached_at_start, refresh=False)
            for st in active:
                bar.update(advance(st))
    finally:
        bar.close()
    rows = []
    failed_calls = too_long = 0
    for st in states:
        assert st.result is not None
        c = count(st.outcomes)
        failed = [resolved[k] for k in st.calls if resolved[k].verdict == "fail"]
        long_ = sum(is_too_long(v.error) for v in failed)
        failed_calls += len(failed)
        too_long += long_
        rows.append(_row(st.p.pid, jh, strategy, st.result, len(st.p.cands), len(st.calls), c.ties, c.failures,
                         c.inconsistent, c.consistency, long_))
    stats = {
        "judge_calls_new": new_calls, "judge_calls_cached": cached_at_start, "call_failures_new": failures,
        "failed_calls": failed_calls, "too_long": too_long,
        "cycles": sum(st.result.cycles for st in states if st.result), "agreed_pairs": 0,
    }
    agreed = sum(count(st.outcomes).agreed for st in states)
    stats["agreed_pairs"] = agreed
    return rows, stats


# -- pointwise (reward model) ---------------------------------------------------------------------
def _run_scores(
    run: RunDir, cfg: RankConfig, judge: PointwiseJudge, jh: str, prompts: list[_Prompt], old: pl.DataFrame | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    done: dict[tuple[str, str], ScoreResult] = {}
    keys = {(p.pid, c.id): content_key(jh, p.messages, p.reference, c.text, None) for p in prompts for c in p.cands}
    if old is not None and old.height and "content_key" in old.columns:
        for r in old.filter(pl.col("verdict") != "fail").sort("created").iter_rows(named=True):
            if r["content_key"] is not None and r["content_key"] == keys.get((r["prompt_id"], r["a_id"])):
                done[(r["prompt_id"], r["a_id"])] = ScoreResult(r["a_id"], r["score"], r["n_tokens"] or 0, bool(r["truncated"]))
    cached = len(done)
    # identical texts in a prompt are scored once and share the score
    rep: dict[tuple[str, str], str] = {}
    todo: list[ScoreRequest] = []
    if getattr(judge, "needs_reference", False):
        prompts = [p for p in prompts if p.reference is not None]  # counted in the summary, never scored
    for p in prompts:
        first_of: dict[str, str] = {}
        for c in p.cands:
            r = first_of.setdefault(c.text, c.id)
            rep[(p.pid, c.id)] = r
            if r == c.id and (p.pid, c.id) not in done:
                todo.append(ScoreRequest(p.pid, p.messages, c, p.reference))
    bar = _progress(cfg, len(todo))
    failures = truncated = 0
    chunk = max(cfg.batch_size, cfg.rm_batch_size)
    try:
        for s in range(0, len(todo), chunk):
            reqs = todo[s : s + chunk]
            res = judge.score(reqs)
            now = time.time()
            shard = []
            for q, r in zip(reqs, res, strict=True):
                ok = r.score is not None and r.error is None
                shard.append({
                    "prompt_id": q.prompt_id, "a_id": q.candidate.id, "b_id": None, "order": 0, "verdict": "score" if ok else "fail",
                    "winner_id": None, "score": r.score, "raw": "", "error": r.error, "latency_s": r.latency_s, "attempts": 1,
                    "repaired": False, "n_tokens": r.n_tokens, "truncated": r.truncated, "judge_hash": jh, "created": now,
                    "content_key": keys[(q.prompt_id, q.candidate.id)],
                })
                done[(q.prompt_id, q.candidate.id)] = r
                failures += not ok
                truncated += r.truncated
            run.write_judgments(jh, shard)
            bar.update(len(reqs))
            bar.set_postfix(failures=failures, truncated=truncated, refresh=False)
    finally:
        bar.close()
    rows = []
    failed_calls = 0
    for p in prompts:
        ids = [c.id for c in p.cands]
        scores: dict[str, float | None] = {}
        for cid in ids:
            r = done.get((p.pid, rep[(p.pid, cid)]))
            scores[cid] = r.score if r is not None and r.error is None else None
        ranking = rank_by_scores(ids, scores, cfg.min_margin)
        group = [r for r in ranking.ranks if r is not None]
        ties = sum(a == b for i, a in enumerate(group) for b in group[i + 1 :])  # pairs sharing a tie group
        reps = {rep[(p.pid, c)] for c in ids}
        failed_calls += sum(1 for c in reps if (p.pid, c) not in done or done[(p.pid, c)].error is not None)
        rows.append(_row(p.pid, jh, "scores", ranking, len(ids), len(reps), ties, sum(v is None for v in scores.values()), 0,
                         None, 0))
    truncated_total = sum(1 for r in done.values() if r.truncated)
    return rows, {"judge_calls_new": len(todo), "judge_calls_cached": cached, "call_failures_new": failures,
                  "failed_calls": failed_calls, "too_long": 0, "truncated_inputs": truncated_total}


# -- output ---------------------------------------------------------------------------------------
def is_too_long(error: str | None) -> bool:
    """A call refused because the judge prompt does not fit the judge's context (it fails again on a rerun)."""
    return bool(error) and str(error).removeprefix("repair: ").startswith("too_long")


def _row(pid: str, jh: str, strategy: str, r: Ranking, n: int, calls: int, ties: int, failures: int, inconsistent: int,
         consistency: float | None, too_long: int) -> dict[str, Any]:
    margin = None
    if r.best_id is not None and r.worst_id is not None:
        s = dict(zip(r.candidate_ids, r.scores, strict=True))
        if s.get(r.best_id) is not None and s.get(r.worst_id) is not None:
            margin = float(s[r.best_id]) - float(s[r.worst_id])  # type: ignore[arg-type]
    return {
        "prompt_id": pid, "judge_hash": jh, "strategy": strategy, "candidate_ids": r.candidate_ids, "ranks": r.ranks,
        "scores": r.scores, "best_id": r.best_id, "worst_id": r.worst_id, "complete": r.complete, "n_candidates": n,
        "comparisons": calls, "ties": ties, "failures": failures, "inconsistent": inconsistent, "consistency": consistency,
        "margin": margin, "too_long": too_long,
    }


def read_rankings(run: RunDir, judge_hash: str) -> pl.DataFrame | None:
    """The rankings of one judge, one row per prompt (see `RunDir.read_rankings`)."""
    return run.read_rankings(judge_hash)


def read_judgments(run: RunDir, judge_hash: str) -> pl.DataFrame | None:
    """Every judge call of one judge (see `RunDir.read_judgments`)."""
    return run.read_judgments(judge_hash)


def _summarize(rows: list[dict[str, Any]], stats: dict[str, Any], jh: str, strategy: str, elapsed: float) -> dict[str, Any]:
    n = len(rows)
    comparisons = sum(r["comparisons"] for r in rows)
    inconsistent = sum(r["inconsistent"] for r in rows)
    agreed = stats.pop("agreed_pairs", None)
    consistency = None
    if agreed is not None and agreed + inconsistent:
        consistency = agreed / (agreed + inconsistent)
    return {
        "judge_hash": jh,
        "strategy": strategy,
        "prompts": n,
        "candidates": sum(r["n_candidates"] for r in rows),
        "comparisons": comparisons,
        "comparisons_per_prompt": comparisons / n if n else 0.0,
        "ties": sum(r["ties"] for r in rows),
        "failures": sum(r["failures"] for r in rows),
        "inconsistent": inconsistent,
        "consistency": consistency,
        "with_best_and_worst": sum(r["best_id"] is not None for r in rows),
        "without_preference": sum(r["best_id"] is None for r in rows),
        "prompts_not_final": sum(r["failures"] > 0 for r in rows),
        "elapsed_s": round(elapsed, 3),
        "calls_per_s": round(stats.get("judge_calls_new", 0) / elapsed, 3) if elapsed > 0 else None,
        **stats,
    }


def _progress(cfg: RankConfig, total: int) -> Any:
    return console_progress(total, "rank", "cmp", disable=not cfg.progress, smoothing=0.1)


__all__ = ["RankConfig", "build_judge", "prompts_with_candidates", "rank_run", "read_judgments", "read_rankings"]
