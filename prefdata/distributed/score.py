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
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from prefdata.console import say
from prefdata.distributed.cluster import ACTOR_RETRIES, actor_plan, failure_reason, import_ray, ray_cluster
from prefdata.errors import PrefdataError
from prefdata.judges.verdict import PairRequest, ScoreRequest, ScoreResult, Verdict


class JudgeActor:
    """The judge the config names, built in the worker (a reward model, a verifier, or an LLM judge over an
    in-process vLLM engine that lives as long as the actor: all rounds of a rank use it)."""

    def __init__(self, cfg: Any, n_items: int | None) -> None:
        from prefdata.judges.build import build_judge

        self.judge = build_judge(cfg, n_items=n_items)

    def info(self) -> dict[str, Any]:
        from prefdata.rank.run import judge_dtype

        template = getattr(self.judge, "template", None)
        backend = getattr(self.judge, "backend", None)
        return {"config": self.judge.config(), "needs_reference": bool(getattr(self.judge, "needs_reference", False)),
                "backend": backend if isinstance(backend, str) else None, "dtype": judge_dtype(self.judge),
                "pairwise": hasattr(self.judge, "judge"),
                "template": (template.name, template.sha256) if template is not None else None}

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return self.judge.score(requests)  # type: ignore[union-attr]

    def judge_pairs(self, requests: list[PairRequest]) -> list[Verdict]:
        return self.judge.judge(requests)  # type: ignore[union-attr]

    def close(self) -> None:
        """Stop an in-process vLLM engine (a vLLM reward model, an LLM judge) before the actor is killed."""
        from prefdata.llm.vllm_engine import shutdown_llm

        for obj in (self.judge, getattr(self.judge, "backend", None)):
            llm = getattr(obj, "llm", None)
            if llm is not None:
                shutdown_llm(llm)
                return


class _RayJudge:
    """The actors behind a judge interface: each call is split across them, answered in parallel and returned in
    request order; config() is the actors' judge's, so the judge hash (and the cache) are the local judge's."""

    def __init__(self, actors: list[Any], info: dict[str, Any]) -> None:
        self.actors = list(actors)
        self._config = info["config"]
        self.needs_reference = info["needs_reference"]
        self.backend = info["backend"]
        self.dtype = info["dtype"]
        self.template = SimpleNamespace(name=info["template"][0], sha256=info["template"][1]) if info["template"] else None

    def config(self) -> dict[str, object]:
        return dict(self._config)

    def _call(self, method: str, requests: list[Any], failed: Callable[[Any, str], Any]) -> list[Any]:
        ray = import_ray()
        if not self.actors:
            return [failed(r, "no engine actor left on the Ray cluster") for r in requests]
        k = min(len(self.actors), len(requests))
        size = -(-len(requests) // k) if k else 0
        parts = [(self.actors[i], requests[i * size : (i + 1) * size]) for i in range(k)]
        refs = [(a, part, getattr(a, method).remote(part)) for a, part in parts if part]
        out: list[Any] = []
        for actor, part, ref in refs:
            try:
                out.extend(ray.get(ref))
            except ray.exceptions.RayError as e:  # the actor died past its retries, or the judge raised
                reason = failure_reason(e)
                if isinstance(e, ray.exceptions.RayActorError) and actor in self.actors:
                    self.actors.remove(actor)
                    reason = f"the engine actor died {ACTOR_RETRIES + 1} times on this batch ({reason})"
                out.extend(failed(r, reason[:500]) for r in part)
        return out


class RayScoreJudge(_RayJudge):
    """A PointwiseJudge on Ray actors (reward models, verifiers)."""

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return self._call("score", requests, lambda r, why: ScoreResult(r.candidate.id, None, error=why))


class RayPairJudge(_RayJudge):
    """A PairJudge on Ray actors (an LLM judge over in-process vLLM): the driver runs the rounds, the engines stay
    up between them."""

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        return self._call("judge_pairs", requests, lambda r, why: Verdict.from_slot(r, None, error=why))


def is_pointwise_judge(judge: str) -> bool:
    from prefdata.judges.reward_model import is_reward_model_dir
    from prefdata.judges.verifier import is_verifier

    return is_verifier(judge) or is_reward_model_dir(judge)


def judge_engine(engine: str, judge: str, base_url: list[str]) -> str:
    """Where a command's judge runs under its --engine: an in-process judge (reward model, verifier, LLM judge over
    in-process vLLM) in Ray actors; an LLM judge behind --base-url is remote already, so it stays a client here
    while the command's sampling goes to Ray (`ray_judge` refuses it)."""
    return "ray" if engine == "ray" and (is_pointwise_judge(judge) or not base_url) else "local"


@contextlib.contextmanager
def ray_judge(cfg: Any, n_items: int | None, progress: bool = True) -> Iterator[RayScoreJudge | RayPairJudge]:
    """The cluster and its judge actors for the `with` block (`cfg`: a RankConfig)."""
    jc = cfg.judge_config()
    if jc.base_url and not is_pointwise_judge(jc.judge):
        raise PrefdataError("--engine ray runs in-process judges in Ray actors; a judge behind --base-url is already "
                            "remote (give several --base-url to spread its calls); drop --engine ray")
    with ray_cluster(cfg.ray_address) as cluster:
        ray = import_ray()
        n, resources = actor_plan(cluster, cfg.dp, 1)
        remote = ray.remote(JudgeActor).options(max_restarts=ACTOR_RETRIES, max_task_retries=ACTOR_RETRIES, **resources)
        actors = [remote.remote(cfg, n_items) for _ in range(n)]
        try:
            try:
                infos = ray.get([a.info.remote() for a in actors])
            except ray.exceptions.RayError as e:
                raise PrefdataError(f"the judge could not start on the Ray cluster: {failure_reason(e)}") from None
            if progress:
                say(f"rank: {n} judge actor(s) on {'a local Ray' if cluster.started_here else 'the Ray cluster'} "
                    f"({cluster.nodes} node(s), {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs)")
            yield (RayPairJudge if infos[0]["pairwise"] else RayScoreJudge)(actors, infos[0])
        finally:
            for ref in [a.close.remote() for a in actors]:
                with contextlib.suppress(Exception):  # a dead actor has nothing to close
                    ray.get(ref, timeout=60)
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
