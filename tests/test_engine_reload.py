"""iterate's engine reuse: a checkpoint's weights loaded into a running vLLM engine in place (slow: vLLM)."""

from __future__ import annotations

from prefdata.iterate import reload_weights


def _greedy(llm, prompts):
    from vllm import SamplingParams

    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], SamplingParams(temperature=0, max_tokens=12),
                    use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_reload_weights_changes_the_model_and_back(tmp_path, vllm_llm, tiny_llama_dir, demo_model_dir):
    from tests.helpers import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other", demo_model_dir, seed=7)
    prompts = ["What is 12 + 30?", "Name a colour.", "Count to three."]
    before = _greedy(vllm_llm, prompts)
    try:
        reload_weights(vllm_llm, str(other))
        changed = _greedy(vllm_llm, prompts)
    finally:
        reload_weights(vllm_llm, str(tiny_llama_dir))  # the session engine is shared: put its weights back
    assert changed != before
    assert _greedy(vllm_llm, prompts) == before
