"""The loop: generate, rank, export and train each round from the last checkpoint, engines reused, all resumable.

With --engine ray the in-process stages (sampling, an in-process judge, the eval's answers and judge) run in Ray
actors that hold their engines for one stage; one Ray serves the whole loop, and training stays in this process
(transformers' Trainer on accelerate), as in a local loop."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from prefdata.console import captured, say
from prefdata.errors import PrefdataError
from prefdata.iterate.config import IterateConfig, RoundNotFinal, round_dir
from prefdata.iterate.report import IterateSummary, effective_config, write_round_table
from prefdata.run.records import TRAIN_SUMMARY
from prefdata.run.store import RunDir, atomic_write_bytes, check_writable, command_line


def policy_for_round(workdir: Path, cfg: IterateConfig, t: int) -> str | None:
    if t == 0:
        return cfg.model
    prev = round_dir(workdir, t - 1) / "train"
    if not (prev / TRAIN_SUMMARY).is_file():
        raise PrefdataError(f"round {t - 1} has no finished checkpoint in {prev}; rerun the loop to finish it")
    return str(prev)


def _slice_prompts(cfg: IterateConfig, t: int, out: Path, held_out: set[str] | None = None) -> str | None:
    """The round's prompt file: a new slice of the prompt file each round (wrapping around), without the
    held-out eval prompts, and with the reference answers when generate reads them."""
    if cfg.prompts_per_round is None and not held_out:
        return cfg.prompts
    from prefdata.run.prompts import load_prompts

    ref = cfg.generate.get("reference_field")
    table = load_prompts(cfg.prompts, field=cfg.generate.get("prompt_field"), reference_field=ref).table
    if held_out:
        table = table.filter(~pl.col("prompt_id").is_in(list(held_out)))
        if table.height == 0:
            raise PrefdataError("every prompt is held out for eval; lower --eval-size or pass --eval-prompts FILE")
    if cfg.prompts_per_round is None:
        rows = table
    else:
        k = min(cfg.prompts_per_round, table.height)
        start = (t * k) % table.height
        rows = table[[(start + i) % table.height for i in range(k)]]
    if ref:
        lines = [json.dumps({"messages": m, ref: r}, ensure_ascii=False) for m, r in zip(rows["messages"].to_list(),
                                                                                          rows["reference"].to_list(), strict=True)]
    else:
        lines = [json.dumps({"messages": m.to_list()}, ensure_ascii=False) for m in rows["messages"]]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    return str(out)


@captured("iterate")
def iterate(workdir: str | Path, cfg: IterateConfig, progress: bool = True, log: Any = say) -> IterateSummary:
    """Run (or resume) the loop; returns the per-round summary table."""
    workdir = Path(workdir)
    cfg.check_stages()
    check_writable(workdir, "--workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    _record(workdir, cfg)
    with _stage_cluster(cfg, log):
        return _rounds(workdir, cfg, progress, log)


@contextlib.contextmanager
def _stage_cluster(cfg: IterateConfig, log: Any) -> Iterator[None]:
    """--engine ray: one Ray for every stage of every round (each stage's own `ray_cluster()` finds it running),
    started once rather than once per stage, and stopped when the loop ends if it was started for the loop."""
    if cfg.engine != "ray":
        yield
        return
    from prefdata.distributed.cluster import ray_cluster

    with ray_cluster(cfg.ray_address) as cluster:
        where = "a local Ray started for this loop" if cluster.started_here else "the Ray cluster"
        log(f"iterate: sampling, ranking and eval on {where} ({cluster.nodes} node(s), {cluster.cpus:g} CPUs, "
            f"{cluster.gpus:g} GPUs); training on this machine")
        yield


def _rounds(workdir: Path, cfg: IterateConfig, progress: bool, log: Any) -> IterateSummary:
    from prefdata.distributed.score import judge_engine
    from prefdata.export import export_run
    from prefdata.generate import GenerateConfig, generate_run, model_label, prompts_todo, sampler_dtype
    from prefdata.iterate import eval as ie
    from prefdata.judges.verifier import is_verifier
    from prefdata.llm.vllm_engine import build_llm, shutdown_llm, start_engine
    from prefdata.models import resolve_model
    from prefdata.rank import rank_run
    from prefdata.train import train

    on_ray = cfg.engine == "ray"  # the stages start their engines in Ray actors: this process holds none
    judge_llm: Any = None
    judge_path: str | None = None
    judging = cfg.stage_config("rank")  # the fixed judge; judge_model None means the starting model here
    in_process_judge = not judging.base_url and not Path(judging.judge).is_dir() and not is_verifier(judging.judge)
    if in_process_judge:
        judge_path = resolve_model(judging.judge_model if judging.judge_model else cfg.model)
    held_out = ie.eval_prompt_ids(workdir, cfg)  # never trained on
    start_path = resolve_model(cfg.model) if held_out else ""
    eval_judge_model = ((judging.judge_model if judging.base_url else judge_path)
                        if (judging.judge_model or in_process_judge) else None)  # fmt: skip
    reuse = cfg.reuse_engine and not in_process_judge
    shared: dict[str, Any] = {"llm": None, "model": None}

    def engine(gcfg: Any, path: str) -> Any:
        """The policy engine for `path`: a new one, or (reuse) the loop's one with `path`'s weights loaded."""
        if not reuse:
            return build_llm(gcfg, path)
        if shared["llm"] is None:
            shared["llm"], shared["model"] = build_llm(gcfg, path), path
        elif shared["model"] != path:
            reload_weights(shared["llm"], path)
            shared["model"] = path
        return shared["llm"]

    def release(llm: Any) -> None:
        if not reuse:
            shutdown_llm(llm)

    try:
        for t in range(cfg.rounds):
            rd = round_dir(workdir, t)
            run = RunDir(rd)
            if (rd / "train" / TRAIN_SUMMARY).is_file():
                log(f"round {t}: done")
                continue
            policy = policy_for_round(workdir, cfg, t)
            policy_path = resolve_model(policy)
            t0 = time.time()
            gen_fields = cfg.stage("generate")
            gen_cfg_probe = GenerateConfig(model=policy_path, **gen_fields)
            log(f"round {t}: policy {model_label(gen_cfg_probe)} ({sampler_dtype(gen_cfg_probe) or gen_cfg_probe.backend})")
            policy_llm = None
            try:
                # -- prompts (optionally written by the policy) and sampling
                if cfg.self_instruct:
                    from prefdata.self_instruct import SelfInstructConfig, run_self_instruct

                    si_file = rd / "self_instruct.jsonl"
                    if not si_file.is_file():
                        policy_llm = engine(gen_cfg_probe, policy_path)
                        si_cfg = SelfInstructConfig(pool=cfg.prompts, num_prompts=cfg.self_instruct_prompts, seed=t)
                        si = run_self_instruct(policy_llm, si_cfg, si_file)
                        log(f"round {t}: self-instruct kept {si['prompts']} prompts ({si.get('filtered')})")
                    if on_ray:  # the prompts are written here; sampling starts its own engines in Ray actors
                        release(policy_llm)
                        policy_llm = None
                    prompt_file = str(si_file)
                else:
                    sliced = rd / "round_prompts.jsonl"
                    prompt_file = str(sliced) if sliced.is_file() else _slice_prompts(cfg, t, sliced, held_out)
                if prompt_file != cfg.prompts:
                    gen_fields.pop("prompt_field", None)  # our own files use `messages` / `prompt`
                gcfg = GenerateConfig(prompts=prompt_file, model=policy_path, engine=cfg.engine,
                                      ray_address=cfg.ray_address, **gen_fields)
                # the policy also answers the eval prompts: as the starting model (round 0), or as the last checkpoint
                eval_todo = bool(held_out) and (ie.start_needs_sampling(workdir, cfg, start_path) if t == 0
                                                else bool(ie.pending(workdir, cfg, t - 1, start_path)))
                if gcfg.backend == "vllm" and policy_llm is None and not on_ray and (prompts_todo(run, gcfg) > 0 or eval_todo):
                    policy_llm = engine(gcfg, policy_path)
                if eval_todo and t == 0:
                    ie.sample_start(workdir, cfg, start_path, policy_llm, progress)
                elif eval_todo:
                    ie.sample(workdir, cfg, t - 1, start_path, policy_llm, progress)
                gs = generate_run(run, gcfg, llm=policy_llm, progress=progress)
                log(f"round {t}: generate: {gs.lines()[2]}")
                # -- rank with the fixed judge (round 0 can reuse the policy engine when it is the judge)
                if in_process_judge and judge_llm is None and not on_ray:
                    if policy_llm is not None and judge_path == policy_path:
                        judge_llm, policy_llm = policy_llm, None
                    else:
                        release(policy_llm)
                        policy_llm = None
                        judge_llm = start_engine(judge_path, seed=0)
            finally:
                release(policy_llm)
            rank_fields: dict[str, Any] = {"progress": progress, "ray_address": cfg.ray_address,
                                           "engine": judge_engine(cfg.engine, judging.judge, judging.base_url)}
            if "pairs" not in cfg.stage("rank"):  # what export will form picks rank's default strategy (sort: a full order)
                ex = cfg.stage("export")
                rank_fields["pairs"] = "ranking" if ex.get("shape") == "ranking" else ex.get("pairs", "best-worst")
            if in_process_judge:
                rank_fields["judge_model"] = judge_path
            rs = rank_run(run, cfg.stage_config("rank", **rank_fields), llm=judge_llm)
            log(f"round {t}: rank: {_brief(rs)}")
            retry = rs.calls_to_retry
            if retry > 0:  # the round would train on rankings that rest on failed calls: stop, a rerun retries them
                raise RoundNotFinal(
                    f"round {t}: {retry} judge calls failed, so the rankings of {rs.get('prompts_not_final')} prompts "
                    "are not final; the round stops before export and training; run the same command again to "
                    "retry those calls and go on"
                )
            if t >= 1:
                ie.judge(workdir, cfg, t - 1, start_path, judge_llm, eval_judge_model, progress, log)
            # -- export best vs worst
            # this round's judge by name: a resumed round under a changed judge (a new verifier version) leaves the
            # old judge's rankings beside the new ones
            ecfg = cfg.stage_config("export", out=str(run.exports_dir("pairs")), name="pairs", overwrite=True,
                                    judge_hash=rs["judge_hash"])
            es = export_run(run, ecfg)
            log(f"round {t}: export: {es.lines()[0]}")
            # -- train from the policy, with the policy as the reference (AIPO)
            if in_process_judge and judge_llm is not None and _low_memory():
                shutdown_llm(judge_llm)
                judge_llm = None
            tr_fields = cfg.stage("train")
            ts = train(es.out, model=policy_path, output_dir=str(rd / "train"),
                       resume_from_checkpoint=_has_checkpoint(rd / "train"), **tr_fields)
            log(f"round {t}: train: step {ts.get('global_step')}, loss {ts.get('train_loss')} ({time.time() - t0:.0f} s)")
            write_round_table(workdir)
        # checkpoints not evaluated yet (the last one, or any a crash left): their own engines
        for t in range(cfg.rounds) if held_out else ():
            if not ie.pending(workdir, cfg, t, start_path):
                continue
            ck = str(ie.checkpoint(workdir, t))
            eval_llm = None
            gen_fields = {**cfg.stage("generate"), "n": 1}
            if gen_fields.get("backend", "vllm") == "vllm" and not on_ray:
                eval_llm = engine(GenerateConfig(model=ck, **gen_fields), resolve_model(ck))
            try:
                ie.sample(workdir, cfg, t, start_path, eval_llm, progress)
            finally:
                release(eval_llm)
            if in_process_judge and judge_llm is None and not on_ray:
                judge_llm = start_engine(judge_path, seed=0)
            ie.judge(workdir, cfg, t, start_path, judge_llm, eval_judge_model, progress, log)
    finally:
        shutdown_llm(shared["llm"])
        shutdown_llm(judge_llm)
    return IterateSummary(str(workdir), write_round_table(workdir))


def reload_weights(llm: Any, path: str) -> None:
    """Load a checkpoint's weights into a running vLLM engine in place (same architecture and tokenizer), and
    drop the prefix cache computed with the old weights."""
    llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
    llm.reset_prefix_cache()


def _has_checkpoint(out: Path) -> bool:
    return out.is_dir() and any(p.name.startswith("checkpoint-") for p in out.iterdir())


def _low_memory() -> bool:
    try:
        import torch

        return torch.cuda.is_available() and torch.cuda.device_count() == 1
    except Exception:  # noqa: BLE001
        return False


def _brief(summary: Any) -> str:
    if isinstance(summary, Mapping):
        keys = ("prompts", "ranked", "comparisons", "ties", "failures", "inconsistent", "consistency")
        return ", ".join(f"{k} {summary[k]}" for k in keys if k in summary)
    return str(summary)


def _record(workdir: Path, cfg: IterateConfig) -> None:
    path = workdir / "iterate.json"
    meta = json.loads(path.read_text()) if path.is_file() else {"commands": []}
    same = effective_config(dataclasses.asdict(cfg))
    if meta.get("config") and effective_config(meta["config"]) != same:
        raise PrefdataError(
            f"{workdir} was started with a different loop config; use a new workdir, or rerun with the same flags "
            f"(only --rounds may change; recorded in {path})"
        )
    meta["config"] = dataclasses.asdict(cfg)
    cmd = command_line()
    if cmd not in meta["commands"]:
        meta["commands"].append(cmd)
    atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode())
