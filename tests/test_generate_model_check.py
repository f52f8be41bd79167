"""generate refuses a model whose language-model head would be initialised at random (issue 20 item 9): a reward
model given as --model once exited 0 with samples from a random head, the warning only in the log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prefdata.errors import PrefdataError
from prefdata.generate import GenerateConfig
from prefdata.models import check_generative_model
from tests.helpers import cli


def _prompts(tmp: Path) -> Path:
    p = tmp / "p.jsonl"
    p.write_text('{"prompt": "hi"}\n')
    return p


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_reward_model_as_generate_model_is_refused(tmp_path, capsys, monkeypatch, tiny_rm_dir, backend):
    import prefdata.llm.vllm_engine as engine

    def no_engine(*a: object, **k: object) -> None:
        raise AssertionError("vLLM must not start for a model that is refused")

    monkeypatch.setattr(engine, "build_llm", no_engine)
    run = tmp_path / "run"
    code, _, err = cli(capsys, "generate", str(_prompts(tmp_path)), "--run", str(run), "--backend", backend,
                     "--model", str(tiny_rm_dir), "-n", "1", "--max-tokens", "2")  # fmt: skip
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: --model") and "LlamaForSequenceClassification, not a language model" in lines[0]
    assert not run.exists()


def test_hf_sampler_refuses_missing_lm_head_weights(tmp_path, tiny_rm_dir):
    """A folder whose config claims a causal LM but whose weights lack the LM head: the loader's missing keys."""
    from prefdata.generate.sampling import make_sampler

    fake = Path(shutil.copytree(tiny_rm_dir, tmp_path / "fake-lm"))
    config = json.loads((fake / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (fake / "config.json").write_text(json.dumps(config))
    check_generative_model(str(fake))  # the config alone looks fine
    cfg = GenerateConfig(model=str(fake), backend="hf", n=1, max_tokens=2, dtype="float32")
    with pytest.raises(PrefdataError, match="no trained weights for lm_head.weight"):
        make_sampler(cfg, model_path=str(fake))


def test_causal_lm_passes(tiny_llama_dir):
    check_generative_model(str(tiny_llama_dir))
