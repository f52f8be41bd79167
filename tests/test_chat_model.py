"""The model layer's one chat-model interface (prefdata/llm/chat.py) and its one endpoint config (llm/endpoint.py)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from prefdata.config import build_config, stage_fields
from prefdata.errors import PrefdataError
from prefdata.generate import GenerateConfig
from prefdata.judges.config import JudgeConfig
from prefdata.llm.chat import ENGINES, ModelSpec, Sampling, open_chat_model
from prefdata.llm.context import TOO_LONG
from prefdata.llm.endpoint import Endpoint, endpoint_of


def test_generate_and_the_judge_declare_the_endpoint_once() -> None:
    """One set of names: every Endpoint field is on both configs with Endpoint's help and flags; the defaults that
    differ are sampling's (said beside them), and no endpoint field changes a hash."""
    gen = {f.name: f for f in dataclasses.fields(GenerateConfig)}
    judge = {f.name: f for f in dataclasses.fields(JudgeConfig)}
    for f in dataclasses.fields(Endpoint):
        for theirs in (gen[f.name], judge[f.name]):
            assert theirs.metadata["help"] == f.metadata["help"] and theirs.metadata.get("flag") == f.metadata.get("flag")
            assert theirs.metadata["identity"] is False
    assert endpoint_of(JudgeConfig()) == Endpoint()
    g = endpoint_of(GenerateConfig())
    assert (g.concurrency, g.max_retries, g.backoff_s, g.timeout_s) == (32, 6, 1.0, 600.0)


def test_old_names_keep_working(tmp_path) -> None:
    """generate's `timeout` (YAML, --set, the attribute) and a single `base_url` string are still accepted."""
    conf = tmp_path / "g.yaml"
    conf.write_text("timeout: 9\nbase_url: http://127.0.0.1:1/v1\n")
    cfg = build_config(GenerateConfig, conf)
    assert (cfg.timeout_s, cfg.timeout, cfg.base_url) == (9.0, 9.0, ["http://127.0.0.1:1/v1"])
    assert stage_fields(GenerateConfig, {"timeout": 5}, "--set generate") == {"timeout_s": 5.0}
    assert GenerateConfig(base_url="http://x/v1").base_url == ["http://x/v1"]
    conf.write_text("timeout: 9\ntimeout_s: 8\n")
    with pytest.raises(PrefdataError, match="timeout is the old name of timeout_s; give only timeout_s"):
        build_config(GenerateConfig, conf)


def test_a_model_spec_travels_to_a_worker_as_plain_data() -> None:
    """An out-of-process engine (Ray) ships the spec and opens the model in its worker."""
    spec = ModelSpec("openai", "m", endpoint=Endpoint(base_url=["http://127.0.0.1:1/v1"], concurrency=3))
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert set(ENGINES) == {"vllm", "openai", "hf"}
    with pytest.raises(PrefdataError, match="unknown engine 'ray'"):
        open_chat_model(dataclasses.replace(spec, engine="ray"))


def test_the_transformers_engine_answers_a_judge_and_fails_a_long_call_alone(tiny_llama_dir) -> None:
    """One interface for sampling and judging: the hf engine answers the LLM judge's calls; a conversation that does
    not fit its context fails alone as too_long (never sent), and logprob mode names the engines that have it."""
    from prefdata.judges.llm_judge import LLMPairJudge
    from prefdata.judges.templates import load_template
    from prefdata.judges.verdict import Candidate, PairRequest

    model = open_chat_model(ModelSpec("hf", str(tiny_llama_dir), dtype="float32", max_model_len=400))
    convs = [[{"role": "user", "content": "Say yes."}], [{"role": "user", "content": "word " * 600}]]
    short, long = model.chat(convs, Sampling(max_tokens=4))
    assert short.error is None and len(short.completions) == 1 and short.completions[0].n_tokens
    assert long.kind == TOO_LONG and long.error and "more than the judge's context of 400" in long.error
    req = PairRequest("p", (("user", "2+2?"),), Candidate("x", "4"), Candidate("y", "5"))
    (v,) = LLMPairJudge(load_template("verdict-only"), model, max_tokens=4).judge([req])
    assert v.verdict in ("a", "b", "tie", "fail") and v.raw  # a random tiny model: any verdict, but it answered
    assert model.config() == {"backend": "hf", "model": str(tiny_llama_dir)}
    with pytest.raises(PrefdataError, match="logprob mode needs vllm or openai"):
        model.chat(convs[:1], Sampling(max_tokens=1, top_logprobs=5))
