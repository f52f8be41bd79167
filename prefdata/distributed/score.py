"""`rank --engine ray`: the judge runs in a pool of Ray actors, each holding its engine for the whole rank.

The judges on Ray are judges like the local ones, so the drivers (`rank/scores.py`, `rank/pairwise.py`), their
caches of answered calls, the rankings and exit status 3 for failed calls are unchanged. The actors are Ray Core
actors that live for the whole rank (a Ray Data job per chunk would load the model again for every chunk), each
building the judge from the RankConfig inside the worker and reserving `--tp` GPUs (CPUs on a CPU cluster).
- Pointwise judges (reward models, verifiers): each chunk the score driver hands over is split across the actors,
  scored in parallel and returned in request order.
- An LLM pairwise judge: each round of calls goes whole to an actor that is free, and the pairwise driver keeps
  one round per actor (plus one waiting) in flight (`concurrent_calls`). An actor that finishes takes the next
  round at once, so a slow actor holds up only its own prompts, never a barrier across the pool; and the driver
  still writes every round's judgments as it returns, so a killed driver loses at most the rounds in flight.

A chunk or round whose actor dies ACTOR_RETRIES + 1 times comes back as failed calls with the reason, and a new
actor takes the dead one's place (up to ACTOR_RETRIES new actors per actor of the pool), so a call that kills its
judge every time fails alone, even on one actor, and the rerun retries only the failed calls.
"""

from __future__ import annotations

import contextlib
import threading
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


NO_ACTOR = "no engine actor left on the Ray cluster"


def _why(ray: Any, e: BaseException) -> tuple[str, bool]:
    """Why a call to a judge actor failed (one line, for the failed calls' error), and whether the actor is gone:
    it died past its ACTOR_RETRIES restarts, so it is replaced (`_RayJudge._replace`)."""
    reason = failure_reason(e)
    if isinstance(e, ray.exceptions.RayActorError):
        return f"the engine actor died {ACTOR_RETRIES + 1} times on this batch ({reason})"[:500], True
    return reason[:500], False


class _RayJudge:
    """The actors behind a judge interface: each call is split across them, answered in parallel and returned in
    request order; config() is the actors' judge's, so the judge hash (and the cache) are the local judge's."""

    def __init__(self, actors: list[Any], infos: list[dict[str, Any]], spawn: Callable[[], Any]) -> None:
        info = infos[0]
        self.actors = list(actors)
        self._spawn = spawn  # a new actor of the pool's kind, for one that died
        self._spares = ACTOR_RETRIES * len(self.actors)
        self._config = info["config"]
        self.needs_reference = info["needs_reference"]
        self.backend = info["backend"]
        # what the actors computed in, each on its own machine (a cluster of mixed machines can have two)
        self.dtype = ", ".join(sorted({i["dtype"] for i in infos if i["dtype"]})) or None
        self.template = SimpleNamespace(name=info["template"][0], sha256=info["template"][1]) if info["template"] else None

    def config(self) -> dict[str, object]:
        return dict(self._config)

    def _replace(self, actor: Any) -> Any:
        """Take a dead actor out of the pool and start a new one in its place while spares last (Ray restarts an
        actor only ACTOR_RETRIES times; without a new one, one actor's death would fail every call after it)."""
        if actor in self.actors:
            self.actors.remove(actor)
        if self._spares <= 0:
            return None
        self._spares -= 1
        new = self._spawn()
        self.actors.append(new)
        return new

    def _call(self, method: str, requests: list[Any], failed: Callable[[Any, str], Any]) -> list[Any]:
        ray = import_ray()
        if not self.actors:
            return [failed(r, NO_ACTOR) for r in requests]
        k = min(len(self.actors), len(requests))
        size = -(-len(requests) // k) if k else 0
        parts = [(self.actors[i], requests[i * size : (i + 1) * size]) for i in range(k)]
        refs = [(a, part, getattr(a, method).remote(part)) for a, part in parts if part]
        out: list[Any] = []
        for actor, part, ref in refs:
            try:
                out.extend(ray.get(ref))
            except ray.exceptions.RayError as e:  # the actor died past its retries, or the judge raised
                reason, dead = _why(ray, e)
                if dead:
                    self._replace(actor)
                out.extend(failed(r, reason) for r in part)
        return out


class RayScoreJudge(_RayJudge):
    """A PointwiseJudge on Ray actors (reward models, verifiers)."""

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return self._call("score", requests, lambda r, why: ScoreResult(r.candidate.id, None, error=why))


class RayPairJudge(_RayJudge):
    """A PairJudge on Ray actors (an LLM judge over in-process vLLM): each round goes whole to a free actor; the
    pairwise driver keeps `concurrent_calls` calls in flight (one round per actor, plus one), from its threads."""

    def __init__(self, actors: list[Any], infos: list[dict[str, Any]], round_size: int,
                 spawn: Callable[[], Any]) -> None:
        super().__init__(actors, infos, spawn)
        self.concurrent_calls = len(self.actors) * round_size
        self._free = list(self.actors)
        self._changed = threading.Condition()

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        ray = import_ray()

        def failed(why: str) -> list[Verdict]:
            return [Verdict.from_slot(r, None, error=why) for r in requests]

        with self._changed:
            self._changed.wait_for(lambda: bool(self._free) or not self.actors)
            if not self.actors:
                return failed(NO_ACTOR)
            actor = self._free.pop(0)
        dead = False
        try:
            return list(ray.get(actor.judge_pairs.remote(requests)))
        except ray.exceptions.RayError as e:  # the actor died past its retries, or the judge raised
            reason, dead = _why(ray, e)
            return failed(reason)
        finally:
            with self._changed:
                if not dead:
                    self._free.append(actor)
                elif (new := self._replace(actor)) is not None:
                    self._free.append(new)
                self._changed.notify_all()


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
def ray_judge(cfg: Any, n_items: int | None, progress: bool = True, actor: type = JudgeActor
              ) -> Iterator[RayScoreJudge | RayPairJudge]:  # fmt: skip
    """The cluster and its judge actors for the `with` block (`cfg`: a RankConfig). `actor`: the actor class (tests
    pass one whose judge is scripted)."""
    jc = cfg.judge_config()
    if judge_engine("ray", jc.judge, jc.base_url) != "ray":
        raise PrefdataError("--engine ray runs in-process judges in Ray actors; a judge behind --base-url is already "
                            "remote (give several --base-url to spread its calls); drop --engine ray")
    with ray_cluster(cfg.ray_address) as cluster:
        ray = import_ray()
        n, resources = actor_plan(cluster, cfg.dp, jc.tensor_parallel_size)
        remote = ray.remote(actor).options(max_restarts=ACTOR_RETRIES, max_task_retries=ACTOR_RETRIES, **resources)
        actors = [remote.remote(cfg, n_items) for _ in range(n)]

        def spawn() -> Any:
            actors.append(remote.remote(cfg, n_items))  # closed and killed below with the others
            return actors[-1]
        try:
            try:
                infos = ray.get([a.info.remote() for a in actors])
            except ray.exceptions.RayError as e:
                raise PrefdataError(f"the judge could not start on the Ray cluster: {failure_reason(e)}") from None
            if progress:
                say(f"rank: {n} judge actor(s) on {'a local Ray' if cluster.started_here else 'the Ray cluster'} "
                    f"({cluster.nodes} node(s), {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs)")
            if infos[0]["pairwise"]:
                yield RayPairJudge(actors, infos, cfg.batch_size, spawn)
            else:
                yield RayScoreJudge(actors, infos, spawn)
        finally:
            for ref in [a.close.remote() for a in actors]:
                with contextlib.suppress(Exception):  # a dead actor has nothing to close
                    ray.get(ref, timeout=60)
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
