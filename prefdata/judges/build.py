"""Build the judge a `JudgeConfig` names: a verifier, a reward-model folder, or a template over an OpenAI-compatible
server or an in-process vLLM engine. Rank, judge-eval and eval all get their judge here."""

from __future__ import annotations

from typing import Any

from prefdata.errors import PrefdataError
from prefdata.judges.config import HasJudge, JudgeConfig
from prefdata.judges.verdict import PairJudge, PointwiseJudge

# Measured (bench/RESULTS.md 3.4): vLLM's pooling runner scores about 7x faster than transformers' best batch once
# started, but its engine start (about 3 minutes on the 2-core CPU) makes it slower below ~750 candidates.
RM_VLLM_MIN_ITEMS = 2000


def rm_backend_for(cfg: JudgeConfig | HasJudge, n_items: int | None) -> str:
    """`auto`: vLLM when it is installed and there are enough candidates to pay for its engine start, else hf."""
    backend = cfg.judge_config().rm_backend
    if backend != "auto":
        return backend
    if n_items is None or n_items < RM_VLLM_MIN_ITEMS:
        return "hf"
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def build_judge(config: JudgeConfig | HasJudge, llm: Any = None, n_items: int | None = None) -> PairJudge | PointwiseJudge:
    """The judge named by the config: a verifier, a reward-model folder, or a template over OpenAI / in-process vLLM.

    `config`: a JudgeConfig or a stage config carrying one (RankConfig). `n_items`: how many candidates will be
    scored (picks the reward-model backend under rm_backend auto)."""
    cfg = config.judge_config()
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
                return VLLMRewardModelJudge(cfg.judge, max_length=cfg.rm_max_length, seed=cfg.seed, llm=llm, dtype=cfg.dtype)
            except ImportError as e:
                raise PrefdataError("--rm-backend vllm needs vLLM (pip install prefdata[cpu] or [gpu]); or use --rm-backend hf") from e
        return RewardModelJudge(cfg.judge, batch_size=cfg.rm_batch_size, max_length=cfg.rm_max_length, dtype=cfg.dtype)
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
                backend = VLLMBackend.load(resolve_model(cfg.judge_model), seed=cfg.seed, max_model_len=cfg.max_model_len,
                                           dtype=cfg.dtype)
            except ImportError as e:
                raise PrefdataError("an in-process judge needs vLLM (pip install prefdata[cpu] or [gpu]), or pass --base-url") from e
    return LLMPairJudge(
        template, backend, temperature=cfg.temperature, max_tokens=cfg.max_tokens, logprobs=cfg.logprobs,
        tie_band=cfg.tie_band,
    )
