"""`rank --engine ray` for pointwise judges (reward models, verifiers): the judge runs in a pool of Ray actors.

`RayScoreJudge` is a PointwiseJudge like the local ones, so the score driver (`rank/scores.py`), its cache of
answered calls, the rankings and exit status 3 for failed calls are unchanged: each chunk the driver hands it is
split across the actors, scored in parallel and returned in request order. The actors are Ray Core actors that
live for the whole rank (a Ray Data job per chunk would load the model again for every chunk), each building the
judge from the RankConfig inside the worker.

A chunk whose actor dies ACTOR_RETRIES + 1 times comes back as failed calls with the reason; the dead actor
leaves the pool and the others go on, so the rerun retries only the failed calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefdata.console import say
from prefdata.distributed.cluster import ACTOR_RETRIES, actor_plan, failure_reason, import_ray, ray_cluster
from prefdata.errors import PrefdataError
from prefdata.judges.verdict import ScoreRequest, ScoreResult


class ScoreActor:
    """The judge the config names, built in the worker."""

    def __init__(self, cfg: Any, n_items: int | None) -> None:
        from prefdata.judges.build import build_judge

        self.judge = build_judge(cfg, n_items=n_items)

    def info(self) -> dict[str, Any]:
        from prefdata.rank.run import judge_dtype

        return {"config": self.judge.config(), "needs_reference": bool(getattr(self.judge, "needs_reference", False)),
                "backend": getattr(self.judge, "backend", None), "dtype": judge_dtype(self.judge)}

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return self.judge.score(requests)  # type: ignore[union-attr]

    def close(self) -> None:
        """Stop an in-process vLLM engine (the vLLM reward-model backend) before the actor is killed."""
        llm = getattr(self.judge, "llm", None)
        if llm is not None:
            from prefdata.llm.vllm_engine import shutdown_llm

            shutdown_llm(llm)


class RayScoreJudge:
    """A PointwiseJudge whose calls run on the actors; config() is the actors' judge's, so the judge hash (and the
    cache) are those of the local judge."""

    def __init__(self, actors: list[Any], info: dict[str, Any]) -> None:
        self.actors = list(actors)
        self._config = info["config"]
        self.needs_reference = info["needs_reference"]
        self.backend = info["backend"]
        self.dtype = info["dtype"]

    def config(self) -> dict[str, object]:
        return dict(self._config)

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        ray = import_ray()
        if not self.actors:
            return [ScoreResult(r.candidate.id, None, error="no engine actor left on the Ray cluster") for r in requests]
        k = min(len(self.actors), len(requests))
        size = -(-len(requests) // k) if k else 0
        parts = [(self.actors[i], requests[i * size : (i + 1) * size]) for i in range(k)]
        refs = [(a, part, a.score.remote(part)) for a, part in parts if part]
        out: list[ScoreResult] = []
        for actor, part, ref in refs:
            try:
                out.extend(ray.get(ref))
            except ray.exceptions.RayError as e:  # the actor died past its retries, or the judge raised
                reason = failure_reason(e)
                if isinstance(e, ray.exceptions.RayActorError) and actor in self.actors:
                    self.actors.remove(actor)
                    reason = f"the engine actor died {ACTOR_RETRIES + 1} times on this batch ({reason})"
                out.extend(ScoreResult(r.candidate.id, None, error=reason[:500]) for r in part)
        return out


def is_pointwise_judge(judge: str) -> bool:
    from prefdata.judges.reward_model import is_reward_model_dir
    from prefdata.judges.verifier import is_verifier

    return is_verifier(judge) or is_reward_model_dir(judge)


@contextlib.contextmanager
def ray_judge(cfg: Any, n_items: int | None, progress: bool = True) -> Iterator[RayScoreJudge]:
    """The cluster and its judge actors for the `with` block (`cfg`: a RankConfig)."""
    if not is_pointwise_judge(cfg.judge_config().judge):
        raise PrefdataError("--engine ray ranks with a reward model or a verifier; an LLM judge runs with --engine local "
                            "(in-process vLLM, or judge servers through --base-url)")
    with ray_cluster(cfg.ray_address) as cluster:
        ray = import_ray()
        n, resources = actor_plan(cluster, cfg.dp, 1)
        remote = ray.remote(ScoreActor).options(max_restarts=ACTOR_RETRIES, max_task_retries=ACTOR_RETRIES, **resources)
        actors = [remote.remote(cfg, n_items) for _ in range(n)]
        try:
            try:
                infos = ray.get([a.info.remote() for a in actors])
            except ray.exceptions.RayError as e:
                raise PrefdataError(f"the judge could not start on the Ray cluster: {failure_reason(e)}") from None
            if progress:
                say(f"rank: {n} judge actor(s) on {'a local Ray' if cluster.started_here else 'the Ray cluster'} "
                    f"({cluster.nodes} node(s), {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs)")
            yield RayScoreJudge(actors, infos[0])
        finally:
            for ref in [a.close.remote() for a in actors]:
                with contextlib.suppress(Exception):  # a dead actor has nothing to close
                    ray.get(ref, timeout=60)
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
