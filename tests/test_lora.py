"""LoRA / QLoRA training on a real tiny Llama with real peft: what trains, the reference, the saved outputs, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from prefdata.llm.hardware import cpu_has_native_bf16
from prefdata.train.data import PairCollator, compute_logps, tokenize_pairs
from tests.helpers import FAST, build_tiny_llama, cli, pair_rows, write_jsonl

LORA = {"lora_r": 8, "lora_dropout": 0.0, **FAST, "learning_rate": 1e-2}


def _logps(model, tokenizer, n: int = 4) -> torch.Tensor:
    from datasets import Dataset

    ds = tokenize_pairs(Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pair_rows(n)]),
                        tokenizer, 512, 2560)  # fmt: skip
    c, r = compute_logps(model, ds, PairCollator(tokenizer.pad_token_id), 4)
    return torch.tensor([*c, *r])


def test_lora_trains_adapters_only_merges_and_resumes(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefdata.train import train

    torch.set_num_threads(2)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    out = tmp_path / "out"
    s = train(data, str(tiny_llama_dir), out, loss_type="aipo", max_steps=6, save_steps=3, **LORA)
    first, last = s["first_logged"], s["last_logged"]
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # adapters start at B = 0: policy = reference
    assert last["rewards/margins"] > first["rewards/margins"] + 0.5
    assert last["rewards/accuracies"] > first["rewards/accuracies"]

    # the adapter changed (B started at zero), only adapter weights were saved, and they target every decoder linear
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert all(adapter[k].abs().max() > 0 for k in adapter if ".lora_B." in k)
    targets = {t.rsplit(".", 1)[-1] for t in json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"]}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    # the merged model is a plain float32 transformers model (--save-dtype's default: the next round trains from the
    # whole update); base weights not adapted are untouched
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert merged.dtype == torch.float32 and not hasattr(merged, "peft_config")
    mw, bw = merged.state_dict(), base.state_dict()
    assert torch.equal(mw["model.embed_tokens.weight"], bw["model.embed_tokens.weight"])
    assert torch.equal(mw["model.layers.0.input_layernorm.weight"], bw["model.layers.0.input_layernorm.weight"])
    assert not torch.equal(mw["model.layers.0.self_attn.q_proj.weight"], bw["model.layers.0.self_attn.q_proj.weight"])
    assert s["lora"]["merged"] and s["lora"]["merge_seconds"] > 0

    # the merged model scores the pairs as base + adapter does (a float32 merge: before, a bf16 one was within 0.5)
    from peft import PeftModel

    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                                             out / "adapter")  # fmt: skip
    torch.testing.assert_close(_logps(merged, tok), _logps(with_adapter, tok), rtol=1e-4, atol=2e-3)
    assert not torch.allclose(_logps(base.float(), tok), _logps(with_adapter, tok), atol=0.5)  # it did learn

    # resume from step 3: the run continues (adapter + optimizer state from the checkpoint) and ends the same
    out2 = tmp_path / "resumed"
    shutil.copytree(out / "checkpoint-3", out2 / "checkpoint-3")
    r = train(data, str(tiny_llama_dir), out2, loss_type="aipo", max_steps=6, save_steps=3,
              resume_from_checkpoint=str(out2 / "checkpoint-3"), **LORA)  # fmt: skip
    assert r["global_step"] == 6
    assert r["last_logged"]["loss"] == pytest.approx(last["loss"], rel=1e-4)
    assert r["ref_cache"] == s["ref_cache"]


def test_reference_with_disabled_adapters_equals_base_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefdata.train.config import AIPOConfig
    from prefdata.train.lora import load_policy, reference_mode

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cfg = AIPOConfig(output_dir="unused", lora_r=4, report_to=[])
    policy = load_policy(str(tiny_llama_dir), cfg)
    assert policy.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)  # the machine's fast dtype
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # a trained-looking adapter: the policy now differs from the base
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=policy.dtype)
    with reference_mode(policy) as ref:
        ref_logps = _logps(ref, tok)
    assert torch.equal(ref_logps, _logps(base, tok))
    assert not torch.allclose(_logps(policy, tok), ref_logps, atol=1e-2)  # adapters back on afterwards


@pytest.mark.parametrize("loss", ["mrpo", "ipo", "simpo", "bcr", "dpo"])
def test_other_losses_train_with_lora(tmp_path, tiny_llama_dir, demo_model_dir, loss):
    from prefdata.train import train

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    extra = {}
    if loss == "mrpo":
        extra["ref_models"] = [str(build_tiny_llama(tmp_path / "other", demo_model_dir, seed=1))]
    s = train(data, str(tiny_llama_dir), tmp_path / "out", loss_type=loss, max_steps=3, save_strategy="no",
              **extra, **LORA)  # fmt: skip
    assert s["global_step"] == 3 and torch.isfinite(torch.tensor(s["train_loss"]))
    assert len(s["ref_cache"]) == {"mrpo": 2, "simpo": 0}.get(loss, 1)  # SimPO is reference-free
    if cpu_has_native_bf16():  # bf16 weights: not the full fine-tune's cache entries
        assert all("-wbfloat16" in p for p in s["ref_cache"])
    assert s["last_logged"]["rewards/margins"] != 0.0


def test_no_merge_round_after_round_stacks_adapters_exactly(tmp_path, tiny_llama_dir, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefdata.train import train
    from prefdata.train.lora import concat_adapters, is_adapter_dir

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    r0, r1 = tmp_path / "round-0", tmp_path / "round-1"
    r0.mkdir()
    (r0 / "config.json").write_text("{}")  # left by an earlier merged run in this folder: must not shadow the adapter
    code, out, _ = cli(capsys, "train", str(data), "--model", str(tiny_llama_dir), "--output-dir", str(r0), "--lora-r", "4",
                         "--lora-target-modules", "q_proj,v_proj", "--no-merge", "--max-steps", "2", "--lr", "1e-2",
                         "--batch-size", "4")  # fmt: skip
    assert code == 0, out
    assert is_adapter_dir(r0) and not (r0 / "model.safetensors").exists()
    conf0 = json.loads((r0 / "adapter_config.json").read_text())
    assert conf0["base_model_name_or_path"] == str(tiny_llama_dir) and sorted(conf0["target_modules"]) == ["q_proj", "v_proj"]

    # round 1 trains a fresh adapter on round 0's policy (base + adapter 0), with that policy as the reference
    s = train(data, str(r0), r1, max_steps=2, save_strategy="no", **dict(LORA, lora_r=4, lora_merge=False))
    assert s["first_logged"]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert s["lora"]["base"] == str(tiny_llama_dir) and s["lora"]["vllm_max_lora_rank"] == 8
    conf1 = json.loads((r1 / "adapter_config.json").read_text())
    assert conf1["r"] == 8 and conf1["base_model_name_or_path"] == str(tiny_llama_dir)

    # base + stacked adapter == (base + adapter 0 merged) + adapter 1, computed in float32
    tok = AutoTokenizer.from_pretrained(r1)

    def base32():
        return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)

    stacked = PeftModel.from_pretrained(base32(), r1)
    step = PeftModel.from_pretrained(PeftModel.from_pretrained(base32(), r0).merge_and_unload(), r1 / "adapter")
    torch.testing.assert_close(_logps(stacked, tok), _logps(step, tok), rtol=1e-5, atol=1e-3)
    assert not torch.allclose(_logps(stacked, tok), _logps(PeftModel.from_pretrained(base32(), r0), tok), atol=1e-3)

    # the next round's reference is the model vLLM samples (base + B·A): before, a bf16 merge that lost the update
    from prefdata.train.lora import load_plain

    ref = load_plain(str(r0), torch.bfloat16)
    torch.testing.assert_close(_logps(ref, tok), _logps(PeftModel.from_pretrained(base32(), r0), tok), rtol=1e-5, atol=1e-3)

    # transformers loads the adapter folder itself as a model (base + adapter), as the hf sampler does
    auto = AutoModelForCausalLM.from_pretrained(r1, dtype=torch.float32)
    torch.testing.assert_close(_logps(auto, tok), _logps(stacked, tok), rtol=1e-5, atol=1e-3)

    with pytest.raises(Exception, match="modules_to_save"):
        bad = tmp_path / "bad"
        shutil.copytree(r1 / "adapter", bad)
        w = load_file(bad / "adapter_model.safetensors")
        w["base_model.model.lm_head.modules_to_save.weight"] = torch.zeros(2, 2)
        from safetensors.torch import save_file

        save_file(w, bad / "adapter_model.safetensors")
        concat_adapters(r0, bad, tmp_path / "never")


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--load-in-4bit", "--lora-r", "8"], "load-in-4bit"),
        (["--load-in-4bit"], "needs a LoRA rank"),
        (["--no-merge"], "needs a LoRA rank"),
        (["--dtype", "float8"], "dtype must be one of"),
        (["--lora-r", "-1"], "lora_r must be"),
    ],
)
def test_lora_mistakes_are_one_line_exit_2(tmp_path, capsys, flags, match):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    code, _, err = cli(capsys, "train", str(data), "--output-dir", str(tmp_path / "o"), *flags)
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "o").exists()


def test_lora_on_the_lm_head_asks_for_plain_logits(tmp_path, tiny_llama_dir, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    code, _, err = cli(capsys, "train", str(data), "--model", str(tiny_llama_dir), "--output-dir", str(tmp_path / "o"),
                         "--lora-r", "4", "--lora-target-modules", "lm_head,q_proj")  # fmt: skip
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # stderr also has the load progress bar
    assert code == 2 and len(errors) == 1 and "logps-chunk-tokens 0" in errors[0] and "Traceback" not in err, err


@pytest.mark.slow
def test_vllm_serves_the_no_merge_adapter(tmp_path, tiny_llama_dir):
    """vLLM (enable_lora + LoRARequest, as `generate` builds it) scores text like transformers' base + adapter.

    Slow: starts one vLLM engine (LoRA turns torch.compile off on CPU). Run alone: pytest -m slow -k vllm_serves.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams

    from prefdata.generate import GenerateConfig
    from prefdata.generate.config import SampleSpec
    from prefdata.generate.sampling import make_sampler
    from prefdata.llm.vllm_engine import build_llm, lora_request, shutdown_llm
    from prefdata.train import train

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    out = tmp_path / "adapter"
    train(data, str(tiny_llama_dir), out, max_steps=6, save_strategy="no", **dict(LORA, lora_merge=False))
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(pair_rows(1)[0]["prompt"] + pair_rows(1)[0]["chosen"], tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids

    def hf_logp(model) -> float:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).sum().item()

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    want_base = hf_logp(base)
    want_lora = hf_logp(PeftModel.from_pretrained(base, out))
    assert abs(want_lora - want_base) > 1.0  # the adapter matters for this text

    cfg = GenerateConfig(model=str(out), max_model_len=1024, dtype="bfloat16", max_tokens=8)
    llm = build_llm(cfg, str(out))
    try:
        params = SamplingParams(max_tokens=1, prompt_logprobs=0)

        def vllm_logp(lora) -> float:
            o = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False, lora_request=lora)[0]
            return sum(d[t].logprob for t, d in zip(ids[1:], o.prompt_logprobs[1:], strict=True))

        got_lora, got_base = vllm_logp(lora_request(llm)), vllm_logp(None)
        assert got_lora == pytest.approx(want_lora, rel=0.02, abs=0.5)
        assert got_base == pytest.approx(want_base, rel=0.02, abs=0.5)
        sampler = make_sampler(cfg, llm)  # the sampler sends the adapter's request
        outs = sampler.sample([pair_rows(1)[0]["prompt"]], [SampleSpec(kind="policy", n=2, temperature=1.0)])
        assert len(outs[0][0]) == 2
    finally:
        shutdown_llm(llm)


def test_a_model_object_gets_adapters_too(tmp_path, tiny_llama_dir):
    """`AIPOTrainer(model_object, AIPOConfig(lora_r=...))` trains adapters, not every weight (library use)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from prefdata.train.config import AIPOConfig
    from prefdata.train.trainer import AIPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ds = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pair_rows(2)])
    cfg = AIPOConfig(output_dir=str(tmp_path / "o"), lora_r=4, report_to=[], use_cpu=True)
    trainer = AIPOTrainer(model, cfg, ds)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_vllm_loads_the_merged_model(tmp_path, tiny_llama_dir, vllm_llm):
    """The merged bf16 output is an ordinary model folder for vLLM: loaded into the session's engine in place (as
    iterate loads each round's checkpoint), its prompt log-probs equal transformers'. Slow: the shared engine."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams

    from prefdata.iterate import reload_weights
    from prefdata.train import train

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    out = tmp_path / "merged"
    train(data, str(tiny_llama_dir), out, max_steps=2, save_strategy="no", **LORA)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(pair_rows(1)[0]["prompt"] + pair_rows(1)[0]["chosen"], tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(torch.tensor([ids])).logits[0, :-1]
    want = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).sum().item()
    try:
        reload_weights(vllm_llm, str(out))
        o = vllm_llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                              use_tqdm=False)[0]
        got = sum(d[t].logprob for t, d in zip(ids[1:], o.prompt_logprobs[1:], strict=True))
        assert got == pytest.approx(want, rel=0.02, abs=0.5)
    finally:
        reload_weights(vllm_llm, str(tiny_llama_dir))  # the session engine is shared: put its weights back
