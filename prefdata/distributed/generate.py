"""`generate --engine ray`: the prompts still to do, sampled by a pool of engine actors on a Ray cluster.

One Ray Data job: each item is one batch of `--batch-size` prompts (the same batches the local loop makes, so
greedy samples match it), `map_batches` hands it to an actor that holds prefdata's own sampler (`make_sampler`,
built inside the worker from the picklable GenerateConfig), and the driver writes every returned batch as one
candidates shard with the run's atomic write. The run directory lives only on the driver; resume, locks and
run.json work as for a local run, and a local run and a Ray run of one config resume each other (the engine is
not in the sampler hash).

Not Ray Data's `write_parquet`: it writes straight to the final name, so a killed write leaves a truncated shard.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from typing import Any

from prefdata.console import progress as console_progress
from prefdata.console import say
from prefdata.distributed.cluster import ACTOR_RETRIES, actor_plan, failure_reason, import_ray, ray_cluster
from prefdata.errors import PrefdataError
from prefdata.generate.config import GenerateConfig
from prefdata.run.store import RunDir, host_tag


class SampleActor:
    """One engine on one actor: a batch of prompts (JSON) in, its candidate rows (JSON) out. A Python error in
    sampling comes back as the batch's `error`; a crash of the process is Ray's to retry (ACTOR_RETRIES)."""

    def __init__(self, cfg: GenerateConfig, shash: str, label: str) -> None:
        from prefdata.generate.sampling import make_sampler

        self.cfg, self.shash, self.label = cfg, shash, label
        self.sampler = make_sampler(cfg)

    def __del__(self) -> None:
        """Ray Data calls this when the pool is done: stop the engine this actor started (an in-process vLLM
        engine and its worker processes would outlive the actor)."""
        engine = getattr(getattr(self, "sampler", None), "engine", None)
        if engine is not None:
            engine.close()

    def compute_dtype(self) -> str | None:
        """The dtype this actor's engine computes in, decided on the actor's machine (a GPU node's choice is not
        the driver's); None for a server."""
        from prefdata.generate.run import sampler_dtype

        return sampler_dtype(self.cfg, getattr(self.sampler, "llm", None))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from prefdata.generate.run import sample_batch

        out = []
        for item in batch["batch"]:
            job = json.loads(str(item))
            prompts = job["prompts"]
            t0 = time.monotonic()
            try:
                rows, sampled, skipped = sample_batch(self.sampler, self.cfg, prompts, self.shash, self.label)
                res: dict[str, Any] = {"rows": rows, "sampled": sampled, "skipped": skipped, "error": None}
            except Exception as e:  # noqa: BLE001 - the batch fails with its reason; the driver reports it
                res = {"rows": [], "sampled": 0, "skipped": 0, "error": failure_reason(e)}
            res |= {"i": job["i"], "prompts": len(prompts), "sample_s": time.monotonic() - t0, "dtype": self.compute_dtype()}
            out.append(json.dumps(res))
        return {"result": out}


def sample_on_ray(run: RunDir, cfg: GenerateConfig, todo: list[dict[str, Any]], shash: str, label: str,
                  stats: dict[str, float], progress: bool,
                  before_first_shard: Callable[[str | None], None] | None = None, actor: type = SampleActor) -> set[str]:
    """Sample `todo` on the cluster, one shard per returned batch; returns the dtypes the actors computed in.
    Raises PrefdataError naming the batches that failed after the others are written (a rerun retries only
    those). `before_first_shard(dtype)`: called once before the first shard, with its actor's dtype. `actor`: the
    actor class (the benchmark passes one whose sampler sleeps, to time the orchestration alone)."""
    from prefdata.generate.run import write_rows

    with ray_cluster(cfg.ray_address) as cluster:
        ray = import_ray()
        n_actors, resources = actor_plan(cluster, cfg.data_parallel_size, cfg.tensor_parallel_size)
        batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
        n_actors = min(n_actors, len(batches))
        if progress:
            where = "a local Ray" if cluster.started_here else f"the Ray cluster at {cluster.address or 'this process'}"
            say(f"generate: {n_actors} engine actor(s) on {where} ({cluster.nodes} node(s), {cluster.cpus:g} CPUs, "
                f"{cluster.gpus:g} GPUs)")
        per_prompt = sum(s.n for s in cfg.plan())
        bar = console_progress(len(todo) * per_prompt, "generate", "completion", disable=not progress)
        items = [{"batch": json.dumps({"i": i, "prompts": [_plain(r) for r in b]})} for i, b in enumerate(batches)]
        ctx = ray.data.DataContext.get_current()
        saved_errored = ctx.max_errored_blocks
        ctx.max_errored_blocks = -1  # a failed batch must not stop the others; it is counted below
        tag = f"{shash}-{host_tag()}-ray"
        errors: list[str] = []
        returned: set[int] = set()
        dtypes: set[str] = set()
        try:
            # Round 2 redoes the batches round 1 lost to dead actors (a node that went away burns an actor's
            # retries within a second); a batch that kills its engine every time is lost twice and reported.
            # A batch queued on an actor behind one that kills its engine burns its retries with it; round 2
            # holds one batch per actor, so such a batch is done there, and only the killer is lost again.
            # (Round 1 keeps Ray Data's queue: one batch per actor costs a scheduling gap after every batch.)
            for attempt in range(2):
                pending = [it for i, it in enumerate(items) if i not in returned]
                if not pending or (attempt and not ray.is_initialized()):
                    break
                with warnings.catch_warnings():  # max_restarts has no named parameter in 2.60 ("deprecated" ray_remote_args)
                    warnings.simplefilter("ignore")
                    ds = ray.data.from_items(pending, override_num_blocks=len(pending)).map_batches(
                        actor, fn_constructor_kwargs={"cfg": cfg, "shash": shash, "label": label}, batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=min(n_actors, len(pending)), max_tasks_in_flight_per_actor=1 if attempt else None),
                        max_restarts=ACTOR_RETRIES, max_task_retries=ACTOR_RETRIES, **resources,
                    )  # fmt: skip
                for out in ds.iter_rows():
                    res = json.loads(out["result"])
                    returned.add(res["i"])
                    stats.setdefault("ray_first_batch_at", time.monotonic())  # the benchmark's steady-state span
                    stats["ray_last_batch_at"] = time.monotonic()
                    stats["sample_s"] += res["sample_s"] / n_actors  # wall time of sampling, spread over the actors
                    if res["error"]:
                        errors.append(f"{res['prompts']} prompts: {res['error']}")
                        bar.total -= res["prompts"] * per_prompt
                        continue
                    stats["sampled"] += res["sampled"]
                    stats["skipped"] += res["skipped"]
                    bar.total -= res["skipped"] * per_prompt
                    if res["dtype"]:
                        dtypes.add(res["dtype"])
                    if res["rows"]:
                        if before_first_shard is not None:
                            before_first_shard(res["dtype"])
                        write_rows(run, res["rows"], stats, tag=tag)
                    bar.update(res["sampled"] * per_prompt)
        except PrefdataError:
            raise
        except Exception as e:  # noqa: BLE001 - Ray's failures (an actor that cannot start, a lost driver connection)
            raise PrefdataError(f"the Ray job stopped: {failure_reason(e)}; the batches finished so far are saved; "
                                "rerun the same command to resume") from e
        finally:
            ctx.max_errored_blocks = saved_errored
            bar.close()
        failed = len(errors)
        lost = len(batches) - len(returned)
        if lost:
            errors.append(f"{lost} batch(es): their engine actor died {ACTOR_RETRIES + 1} times on them, in two rounds "
                          "(the reason is in the log)")
        if errors:
            raise PrefdataError(f"{failed + lost} batch(es) failed on the Ray cluster ({'; '.join(errors[:3])}); the "
                                f"other batches are saved; rerun the same command to retry only the failed ones")
        return dtypes


def _plain(r: dict[str, Any]) -> dict[str, Any]:
    """A prompt row as the sampler needs it, in plain JSON."""
    return {"prompt_id": r["prompt_id"], "messages": r["messages"], "reference": r.get("reference")}
