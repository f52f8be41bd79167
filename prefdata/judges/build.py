"""Build the judge a `JudgeConfig` names: a verifier, a reward-model folder, or a template over a chat model (an
OpenAI-compatible server or an in-process vLLM engine, opened by `prefdata.llm.chat`). Rank, judge-eval and eval
all get their judge here."""

from __future__ import annotations

from typing import Any

from prefdata.errors import PrefdataError
from prefdata.judges.config import HasJudge, JudgeConfig
from prefdata.judges.verdict import PairJudge, PointwiseJudge
from prefdata.llm.chat import ChatModel
from prefdata.llm.endpoint import endpoint_of

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
                return VLLMRewardModelJudge(cfg.judge, max_length=cfg.rm_max_length, seed=cfg.seed, llm=llm, dtype=cfg.dtype,
                                            tensor_parallel_size=cfg.tensor_parallel_size)
            except ImportError as e:
                raise PrefdataError("--rm-backend vllm needs vLLM (pip install prefdata[cpu] or [gpu]); or use --rm-backend hf") from e
        return RewardModelJudge(cfg.judge, batch_size=cfg.rm_batch_size, max_length=cfg.rm_max_length, dtype=cfg.dtype)
    from prefdata.judges.llm_judge import LLMPairJudge
    from prefdata.judges.templates import load_template

    template = load_template(cfg.judge)
    return LLMPairJudge(
        template, judge_model(cfg, llm), temperature=cfg.temperature, max_tokens=cfg.max_tokens, logprobs=cfg.logprobs,
        tie_band=cfg.tie_band,
    )


def judge_model(cfg: JudgeConfig, llm: Any = None) -> ChatModel:
    """The chat model an LLM judge asks: the OpenAI-compatible server(s) of `base_url` (checked first: /models), a
    shared in-process engine (`llm`), or a vLLM engine started for `judge_model`. The engine is picked in
    `prefdata.llm.chat.open_chat_model`; a judge never sends a policy's LoRA adapter."""
    from prefdata.llm.chat import ModelSpec, open_chat_model

    if cfg.base_url:
        spec = ModelSpec("openai", cfg.judge_model, endpoint=endpoint_of(cfg), preflight=True, what="judge server")
        return open_chat_model(spec)
    if llm is not None:
        return open_chat_model(ModelSpec("vllm", label=cfg.judge_model), llm)
    from prefdata.models import resolve_model

    path = resolve_model(cfg.judge_model)
    try:
        return open_chat_model(ModelSpec("vllm", path, label=path, seed=cfg.seed, max_model_len=cfg.max_model_len,
                                         dtype=cfg.dtype, tensor_parallel_size=cfg.tensor_parallel_size))  # fmt: skip
    except ImportError as e:
        raise PrefdataError("an in-process judge needs vLLM (pip install prefdata[cpu] or [gpu]), or pass --base-url") from e
