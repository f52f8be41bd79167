"""The trainer on real (tiny) models: data reading, tokenization, a training run that learns, resume, the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest
import torch

from prefdata.errors import PrefdataError
from prefdata.llm.hardware import cpu_has_native_bf16
from prefdata.train.data import PairCollator, load_pairs, tokenize_pair, tokenize_pairs
from tests.helpers import FAST, build_tiny_llama, cli, four, hold_stage_lock, make_ranked_run, pair_rows, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


# ---------------------------------------------------------------- data


def test_reads_export_folder_with_splits_and_string_variant(tmp_path):
    data = tmp_path / "export" / "data"
    data.mkdir(parents=True)
    pl.DataFrame(pair_rows(8)).write_parquet(data / "train-00000-of-00001.parquet")
    pl.DataFrame(pair_rows(2)).write_parquet(data / "test-00000-of-00001.parquet")
    (tmp_path / "export" / "README.md").write_text("card")
    train, evals = load_pairs(tmp_path / "export")
    assert len(train) == 8 and evals is not None and len(evals) == 2
    assert train.column_names == ["prompt", "chosen", "rejected"]

    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Bye"}])
    train, evals = load_pairs(plain)
    assert evals is None
    assert train[0]["prompt"] == [{"role": "user", "content": "Hi"}]
    assert train[0]["chosen"] == [{"role": "assistant", "content": "Hello!"}]


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"prompt": "Hi", "chosen": "a"}], "missing rejected"),
        ([{"prompt": "Hi", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}], "one assistant message"),
        ([{"prompt": 3, "chosen": "a", "rejected": "b"}], "must be a string or a list"),
    ],
)
def test_bad_datasets_raise_one_clear_error(tmp_path, rows, match):
    with pytest.raises(PrefdataError, match=match):
        load_pairs(write_jsonl(tmp_path / "bad.jsonl", rows))
    pl.DataFrame({"prompt": ["x"], "chosen": ["y"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(PrefdataError, match="missing column"):
        load_pairs(tmp_path / "bad.parquet")


def test_tokenization_masks_prompt_and_ends_with_one_eos(tokenizer):
    pair = pair_rows(1)[0]
    tok = tokenize_pair(pair, tokenizer, max_prompt_length=512, max_length=2560)
    eos = tokenizer.eos_token_id
    prompt_text = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(tok["prompt_ids"]) == prompt_text  # the template applied once, no extra BOS
    for side in ("chosen", "rejected"):
        ids = tok[f"{side}_ids"]
        assert ids[-1] == eos and ids.count(eos) == 1
        assert tokenizer.decode(ids[:-1]) == pair[side][0]["content"]
    # a completion whose text already ends in the EOS string does not get a second one
    doubled = dict(pair, chosen=[{"role": "assistant", "content": "Sure." + tokenizer.eos_token}])
    ids = tokenize_pair(doubled, tokenizer, 512, 2560)["chosen_ids"]
    assert ids[-1] == eos and ids.count(eos) == 1

    batch = PairCollator(tokenizer.pad_token_id)([tok])
    mask, input_ids = batch["completion_mask"], batch["input_ids"]
    c = mask.shape[1]
    assert batch["attention_mask"][:, :-c].sum(-1).tolist() == [len(tok["prompt_ids"])] * 2  # prompt not in the loss
    assert input_ids[0, -c:][mask[0].bool()].tolist() == tok["chosen_ids"]
    assert input_ids[1, -c:][mask[1].bool()].tolist() == tok["rejected_ids"]


def test_truncation_is_counted(tokenizer):
    from datasets import Dataset

    rows = pair_rows(3)
    rows[0]["prompt"][0]["content"] = "word " * 300
    rows[1]["chosen"][0]["content"] = "long " * 300
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    with pytest.warns(UserWarning, match=r"truncated 1 prompt\(s\).*1 chosen / 0 rejected"):
        tok = tokenize_pairs(ds, tokenizer, max_prompt_length=64, max_length=128)
    assert len(tok[0]["prompt_ids"]) == 64
    assert tokenizer.decode(tok[0]["prompt_ids"]).endswith("<|im_start|>assistant\n")  # the end is kept
    assert len(tok[1]["prompt_ids"]) + len(tok[1]["chosen_ids"]) == 128
    assert tok[1]["chosen_ids"][-1] != tokenizer.eos_token_id  # cut at the end: the EOS is gone, hence the count
    assert tok[2]["chosen_ids"][-1] == tokenizer.eos_token_id


# ---------------------------------------------------------------- training


def test_training_learns_and_resume_continues(tmp_path, tiny_llama_dir):
    from prefdata.train import train

    torch.set_num_threads(2)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    out = tmp_path / "out"
    s = train(data, str(tiny_llama_dir), out, loss_type="aipo", max_steps=6, save_steps=3, **FAST)
    first, last = s["first_logged"], s["last_logged"]
    assert s["global_step"] == 6
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy = reference at step 1
    assert last["rewards/accuracies"] > first["rewards/accuracies"]
    assert last["rewards/margins"] > first["rewards/margins"] + 0.5
    for key in ("margin/policy", "margin/reference", "length/chosen", "length/rejected", "nll", "rewards/chosen"):
        assert key in last

    # the final model is float32 safetensors (the whole update) with the tokenizer and chat template, loadable as is
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "float32"
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
    assert json.loads((out / "prefdata_train.json").read_text())["global_step"] == 6

    # the reference log-probs were cached beside the dataset, and a rerun reuses them
    cache = [Path(p) for p in s["ref_cache"]]
    assert len(cache) == 1 and cache[0].parent == tmp_path / ".prefdata_ref_cache"
    stamp = cache[0].stat().st_mtime_ns

    # resume from step 3: the run continues at step 4 and ends where the uninterrupted run ended
    out2 = tmp_path / "resumed"
    import shutil

    shutil.copytree(out / "checkpoint-3", out2 / "checkpoint-3")
    r = train(data, str(tiny_llama_dir), out2, loss_type="aipo", max_steps=6, save_steps=3,
              resume_from_checkpoint=str(out2 / "checkpoint-3"), **FAST)  # fmt: skip
    assert r["global_step"] == 6
    history = json.loads((out2 / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert r["last_logged"]["loss"] == pytest.approx(last["loss"], rel=1e-4)
    assert r["ref_cache"] == s["ref_cache"] and cache[0].stat().st_mtime_ns == stamp


@pytest.mark.skipif(not (torch.cuda.is_available() or cpu_has_native_bf16()), reason="this CPU has no native bf16")
def test_bf16_autocast_is_the_default_where_the_hardware_computes_bf16(tmp_path, tiny_llama_dir):
    """On a CPU with AVX512-BF16 / AMX (and a bf16 GPU) the default computes in bf16 over float32 master weights;
    `bf16=False` computes in float32. A default run still learns, and its reference is cached apart from float32's."""
    from prefdata.train import train
    from prefdata.train.config import AIPOConfig

    cfg = AIPOConfig(output_dir=str(tmp_path / "c"), report_to=[])
    assert cfg.bf16 is True and (cfg.use_cpu or torch.cuda.is_available())
    assert AIPOConfig(output_dir=str(tmp_path / "c"), report_to=[], bf16=False).bf16 is False

    torch.set_num_threads(2)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    fast = {k: v for k, v in FAST.items() if k != "bf16"}
    s = train(data, str(tiny_llama_dir), tmp_path / "out", loss_type="aipo", max_steps=6, **fast)
    assert s["config"]["bf16"] is True
    assert s["last_logged"]["rewards/margins"] > s["first_logged"]["rewards/margins"] + 0.5
    # the reference was computed under the same autocast: its cache entry is not the float32 one
    assert any("bfloat16" in p for p in s["ref_cache"])


def test_mrpo_with_a_second_reference(tmp_path, tiny_llama_dir, demo_model_dir):
    from prefdata.train import train

    other = build_tiny_llama(tmp_path / "other", demo_model_dir, seed=1)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    s = train(data, str(tiny_llama_dir), tmp_path / "out", loss_type="mrpo", ref_models=[str(other)], max_steps=2,
              save_strategy="no", **FAST)  # fmt: skip
    assert s["global_step"] == 2 and len(s["ref_cache"]) == 2
    assert torch.isfinite(torch.tensor(s["train_loss"]))


# ---------------------------------------------------------------- CLI


def test_cli_bad_dataset_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = cli(capsys, "train", str(tmp_path / "missing.parquet"), "--output-dir", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "y"}])
    code, _, err = cli(capsys, "train", str(bad), "--output-dir", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "missing rejected" in err
    code, _, err = cli(capsys, "train", str(bad), "--output-dir", str(tmp_path / "o"), "--loss", "nope")
    assert code == 2 and err.count("\n") == 1 and "loss_type" in err


def test_cli_trains_with_yaml_config_and_flags(tmp_path, tiny_llama_dir, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(
        f"output_dir: {tmp_path / 'out'}\nlearning_rate: 1.0e-3\nper_device_train_batch_size: 2\n"
        "save_strategy: 'no'\nreport_to: []\ndisable_tqdm: true\nbeta: 0.2\n"
    )
    argv = ["train", str(data), "--model", str(tiny_llama_dir), "--config", str(yaml_file), "--max-steps", "2", "--loss", "dpo"]
    code, out, _ = cli(capsys, *argv)
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["global_step"] == 2
    saved = json.loads((tmp_path / "out" / "prefdata_train.json").read_text())
    assert saved["loss_type"] == "dpo"


def test_chunked_lm_head_matches_plain_logits(tokenizer, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from prefdata.train.data import sequence_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    batch = PairCollator(tokenizer.pad_token_id)([tokenize_pair(p, tokenizer, 512, 2560) for p in pair_rows(3)])
    grads = []
    for chunk in (0, 5):
        model.zero_grad()
        logps, lengths = sequence_logps(model, batch, chunk)
        logps.sum().backward()
        grads.append((logps.detach(), model.model.embed_tokens.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)
    assert lengths.tolist() == batch["completion_mask"].sum(-1).tolist()


# ---------------------------------------------------------------- kill -9 and rerun


CHILD = Path(__file__).with_name("train_child.py")


def _train_argv(data: Path, model: Path, out: Path, steps: int = 4) -> list[str]:
    return ["train", str(data), "--model", str(model), "--output-dir", str(out), "--max-steps", str(steps),
            "--lr", "1e-3", "--batch-size", "4", "--config", str(data.with_name("fast.yaml"))]  # fmt: skip


def _fast_yaml(folder: Path) -> None:
    (folder / "fast.yaml").write_text(
        "warmup_steps: 0\nlogging_steps: 1\nsave_steps: 1\nreport_to: []\ndisable_tqdm: true\n"
        "dataloader_pin_memory: false\nseed: 0\n"
    )


def _child(kill_at: str, argv: list[str]) -> subprocess.CompletedProcess:
    import os
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(CHILD.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(CHILD), kill_at, "--", *argv], capture_output=True, text=True, env=env, timeout=600)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama_dir):
    """One 4-step run that nothing interrupts: the reference for every kill test."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    data = write_jsonl(folder / "pairs.jsonl", pair_rows(12))
    _fast_yaml(folder)
    out = folder / "out"
    done = _child("none", _train_argv(data, tiny_llama_dir, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return data, out


def test_kill_inside_checkpoint_save_then_rerun_resumes(tmp_path, tiny_llama_dir, uninterrupted):
    """Regression (issue 10 item 2): a kill while checkpoint-2 is written left it half-written, and every
    `--resume latest` then failed. Now the half-written folder is dropped and the rerun resumes from checkpoint-1."""
    ref_data, ref_out = uninterrupted
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    _fast_yaml(tmp_path)
    out = tmp_path / "out"
    killed = _child("save:2:weights", _train_argv(data, tiny_llama_dir, out))
    assert killed.returncode == -9
    assert (out / "checkpoint-2" / "model.safetensors").is_file()  # the kill landed inside the save
    assert not (out / "checkpoint-2" / "optimizer.pt").exists()
    rerun = _child("none", [*_train_argv(data, tiny_llama_dir, out), "--resume", "latest"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "prefdata_train.json").read_text())
    assert summary["resumed_from_step"] == 1 and summary["global_step"] == 4
    _assert_same_weights(out, ref_out)
    _assert_same_weights(out / "checkpoint-4", ref_out / "checkpoint-4")


def test_rerun_resumes_refuses_another_config_and_finished_run_does_nothing(tmp_path, tiny_llama_dir, capsys):
    """Regression (issue 10 items 3, 4, 9): a rerun restarted at step 0; a finished run trained one more step per
    `--resume latest`; a different config would mix into the same folder; `--resume latest` on an empty folder."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    _fast_yaml(tmp_path)
    out = tmp_path / "out"
    argv = _train_argv(data, tiny_llama_dir, out, steps=2)
    code, _, err = cli(capsys, *argv, "--resume", "latest")  # no checkpoint yet: one line, nothing trained
    assert code == 2 and err.count("\n") == 1 and "holds no complete checkpoint" in err and "Traceback" not in err
    assert not (out / "prefdata_train.json").exists()
    code, stdout, err = cli(capsys, *argv)  # without --resume: starts at step 0
    assert code == 0 and "Traceback" not in err
    first = json.loads(stdout.strip().splitlines()[-1])
    assert first["global_step"] == 2
    stamp = (out / "model.safetensors").stat().st_mtime_ns

    for extra in ([], ["--resume", "latest"]):  # finished: nothing trains, the summary is printed again
        code, stdout, _ = cli(capsys, *argv, *extra)
        again = json.loads(stdout.strip().splitlines()[-1])
        assert code == 0 and again["already_finished"] and again["global_step"] == 2
        assert again["train_loss"] == first["train_loss"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp

    # killed after checkpoint-1 (the summary and checkpoint-2 gone): the same command resumes at step 1
    import shutil

    shutil.rmtree(out / "checkpoint-2")
    (out / "prefdata_train.json").unlink()
    code, stdout, _ = cli(capsys, *argv)
    assert code == 0
    assert json.loads((out / "prefdata_train.json").read_text())["resumed_from_step"] == 1

    # another learning rate: refused in one line; --overwrite starts over
    other = [a if a != "1e-3" else "2e-3" for a in argv]
    code, _, err = cli(capsys, *other)
    assert code == 2 and err.count("\n") == 1 and "different training run" in err and "learning_rate" in err
    assert "--overwrite" in err
    code, stdout, _ = cli(capsys, *other, "--overwrite")
    summary = json.loads((out / "prefdata_train.json").read_text())
    assert code == 0 and summary["resumed_from_step"] == 0 and summary["config"]["learning_rate"] == 2e-3

    # a checkpoint of another run left without a summary is refused too
    (out / "prefdata_train.json").unlink()
    code, _, err = cli(capsys, *argv)
    assert code == 2 and "checkpoints of a different training run" in err


@pytest.mark.parametrize(
    "flag, value, field",
    [("--lr", "-1", "learning_rate"), ("--lr", "0", "learning_rate"), ("--batch-size", "0", "per_device_train_batch_size"),
     ("--max-steps", "0", "max_steps"), ("--beta", "-0.1", "beta"), ("--lambda", "-1", "lambda_")],
)  # fmt: skip
def test_out_of_range_train_values_are_one_line(tmp_path, capsys, flag, value, field):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    code, _, err = cli(capsys, "train", str(data), "--output-dir", str(tmp_path / "o"), flag, value)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:") and field in err
    assert not (tmp_path / "o").exists()


def test_simpo_runs_no_reference_pass(tmp_path, tiny_llama_dir):
    """Regression (issue 9 item 12): SimPO computed (and cached) reference log-probs it never reads."""
    from prefdata.train import train
    from prefdata.train.data import compute_logps

    calls = []
    import prefdata.train.trainer as trainer_mod

    def counting(*args, **kwargs):
        calls.append(1)
        return compute_logps(*args, **kwargs)

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    original, trainer_mod.compute_logps = trainer_mod.compute_logps, counting
    try:
        s = train(data, str(tiny_llama_dir), tmp_path / "out", loss_type="simpo", beta=2.0, max_steps=1,
                  save_strategy="no", **FAST)  # fmt: skip
    finally:
        trainer_mod.compute_logps = original
    assert calls == [] and s["ref_cache"] == [] and not (tmp_path / ".prefdata_ref_cache").exists()
    assert s["global_step"] == 1 and torch.isfinite(torch.tensor(s["train_loss"]))
    with pytest.raises(PrefdataError, match="simpo uses no reference"):
        train(data, str(tiny_llama_dir), tmp_path / "o2", loss_type="simpo", ref_models=[str(tiny_llama_dir)])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "datasets"])
def test_every_export_format_is_accepted_with_its_split(tmp_path, fmt):
    """Regression (issue 9 item 13): a `--format jsonl` export folder was refused by train."""
    from prefdata.export import ExportConfig, export_run

    run = make_ranked_run(tmp_path / "run", [(f"q{i}", four(f"{i} ")) for i in range(6)])
    s = export_run(run, ExportConfig(format=fmt, test_size=0.34, out=str(tmp_path / fmt)))
    train, evals = load_pairs(tmp_path / fmt)
    assert evals is not None and {"train": len(train), "test": len(evals)} == s.splits  # split by a hash threshold
    assert s.splits["train"] + s.splits["test"] == 6 and min(s.splits.values()) > 0
    prompts = {r["prompt"][0]["content"] for r in train} | {r["prompt"][0]["content"] for r in evals}
    assert prompts == {f"q{i}" for i in range(6)}
    row = train[0]
    assert row["chosen"][0]["content"].endswith("best answer with many words here")
    assert row["rejected"][0]["content"].endswith("bad")


GEMMA_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_gemma_style_end_of_turn_is_where_the_completion_ends(tmp_path, demo_model_dir):
    """Regression (issue 9 item 10): with a template whose end-of-turn token is not eos_token (Gemma), the trainer
    appended <eos> after <end_of_turn>, one token more than vLLM samples (it stops at <end_of_turn> and keeps it)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    tok.add_special_tokens({"eos_token": "<eos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = GEMMA_TEMPLATE
    eos, eot = tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")
    assert eos != eot
    # a Gemma-style generation config: generation stops at <eos> or <end_of_turn>
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=eos))  # fmt: skip
    model.generation_config.eos_token_id = [eos, eot]
    from prefdata.train.data import stop_token_ids

    assert stop_token_ids(model) == sorted([eos, eot])

    pair = pair_rows(1)[0]
    ds = Dataset.from_list([{k: pair[k] for k in ("prompt", "chosen", "rejected")}])
    row = tokenize_pairs(ds, tok, 512, 2560, stop_token_ids(model))[0]
    for side in ("chosen", "rejected"):
        ids = row[f"{side}_ids"]
        # exactly what sampling returns: the answer's tokens, then <end_of_turn>, nothing after it
        assert ids[-1] == eot and eos not in ids and ids.count(eot) == 1
        assert tok.decode(ids[:-1]) == pair[side][0]["content"]
    assert tok.decode(row["prompt_ids"]).endswith("<start_of_turn>model\n")
    # without a stop token in the template, an EOS still ends the completion
    tok.chat_template = GEMMA_TEMPLATE.replace("<end_of_turn>", "")
    ids = tokenize_pairs(ds, tok, 512, 2560, stop_token_ids(model))[0]["chosen_ids"]
    assert ids[-1] == eos and eot not in ids


def test_reference_with_another_tokenizer_is_refused(tmp_path, tiny_llama_dir, demo_model_dir, capsys):
    """Regression (issue 9 item 9): an MRPO reference with another tokenizer scored the policy's ids silently."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    tok.add_tokens(["<extra_a>", "<extra_b>"])
    tok.save_pretrained(tmp_path / "tok")
    other = build_tiny_llama(tmp_path / "other", tmp_path / "tok", seed=1, layers=1)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    capsys.readouterr()  # the build's progress bar
    argv = ["train", str(data), "--model", str(tiny_llama_dir), "--output-dir", str(tmp_path / "o"), "--loss", "mrpo",
            "--ref-model", str(other), "--max-steps", "1"]  # fmt: skip
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "another tokenizer" in err and str(other) in err
    assert not (tmp_path / ".prefdata_ref_cache").exists()


def _tiny_causal_lm(kind: str):
    """A tiny random causal LM of architecture `kind`, with its post-head transform made large enough to matter."""
    import transformers

    common = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "pad_token_id": 0}  # fmt: skip
    configs = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"final_logit_softcapping": 0.3, "head_dim": 8}),
        "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
        "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 3.0}),
        "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM",
                      {"lm_head_multiplier": 3.0, "mamba_d_ssm": 32, "mamba_n_heads": 4, "mamba_d_head": 8,
                       "mamba_d_state": 8, "mamba_n_groups": 1, "mamba_chunk_size": 16, "head_dim": 8}),
    }  # fmt: skip
    cfg_name, model_name, extra = configs[kind]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_name)(**common, **extra)
    return getattr(transformers, model_name)(cfg).float().eval()


def _random_pairs(vocab: int, n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    ids = lambda k: torch.randint(3, vocab, (k,), generator=g).tolist()  # noqa: E731
    return [{"prompt_ids": ids(4 + i), "chosen_ids": ids(6 + 2 * i), "rejected_ids": ids(3 + i)} for i in range(n)]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma2", "granite", "cohere", "falcon_h1"])
def test_chunked_log_probs_equal_plain_for_each_architecture(kind):
    """Regression (issue 9 item 2): the chunked head skipped Granite's logits_scaling and Cohere's logit_scale.
    An architecture the trainer has not checked (FalconH1's lm_head_multiplier) uses the model's own forward."""
    from prefdata.train.data import head_transform, sequence_logps

    model = _tiny_causal_lm(kind)
    batch = PairCollator(0)(_random_pairs(model.config.vocab_size))
    with torch.no_grad():
        plain, _ = sequence_logps(model, batch, 0)
        chunked, _ = sequence_logps(model, batch, 5)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    assert (head_transform(model.config) is None) == (kind == "falcon_h1")


KILL_POINTS = ["step:0"] + [p for n in range(1, 5) for p in (f"save:{n}:weights", f"save:{n}:marker", f"step:{n}")][:-1]
KILL_POINTS.append("final")


@pytest.mark.slow
def test_chaos_kill_train_at_random_points_then_weights_equal_an_uninterrupted_run(tmp_path, tiny_llama_dir, uninterrupted):
    """Issue 10 done-when: kill -9 the same `prefdata train` command at 6 points drawn with a fixed seed (inside
    steps, inside checkpoint saves, while the final model is written); rerunning it each time must end with the
    weights of a run nothing interrupted, bit for bit. (Slow: seven training processes.)"""
    import random

    _, ref_out = uninterrupted
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    _fast_yaml(tmp_path)
    out = tmp_path / "out"
    argv = _train_argv(data, tiny_llama_dir, out)
    points = sorted(random.Random(20261124).sample(range(len(KILL_POINTS)), 6))
    for i in points:
        killed = _child(KILL_POINTS[i], argv)
        assert killed.returncode == -9, (KILL_POINTS[i], killed.stderr[-3000:])
    done = _child("none", argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["global_step"] == 4
    _assert_same_weights(out, ref_out)
    _assert_same_weights(out / "checkpoint-4", ref_out / "checkpoint-4")
    assert not (out / "checkpoint-5").exists()


def test_resume_from_a_missing_or_half_written_checkpoint_is_one_line(tmp_path, tiny_llama_dir, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    _fast_yaml(tmp_path)
    argv = _train_argv(data, tiny_llama_dir, tmp_path / "out", steps=1)
    code, _, err = cli(capsys, *argv, "--resume", str(tmp_path / "nope"))
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    half = tmp_path / "out" / "checkpoint-1"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # what a kill inside the save leaves
    code, _, err = cli(capsys, *argv, "--resume", str(half))
    assert code == 2 and err.count("\n") == 1 and "not a complete checkpoint" in err
    # a checkpoint with a trainer state but no prefdata marker (an earlier version, another trainer) is not
    # deleted as half-written: the rerun refuses it in one line and leaves it in place
    (half / "trainer_state.json").write_text(json.dumps({"global_step": 1, "max_steps": 1}))
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "no prefdata marker" in err and "--overwrite" in err
    assert (half / "config.json").is_file()


def test_a_second_train_into_the_same_folder_stops_with_one_line(tmp_path, tiny_llama_dir, capsys):
    """Regression (issue 10 item 8): train took no lock, so two trains wrote checkpoints into one folder at once."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    _fast_yaml(tmp_path)
    out = tmp_path / "out"
    holder = hold_stage_lock(out, "train")
    try:
        code, _, err = cli(capsys, *_train_argv(data, tiny_llama_dir, out, steps=1))
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and err.count("\n") == 1 and f"another `prefdata train` (pid {holder.pid})" in err
    assert not list(out.glob("checkpoint-*"))


def test_an_output_dir_that_is_a_file_names_output_dir(tmp_path, tiny_llama_dir, capsys):
    """train has no --run: an unwritable --output-dir was reported as "pick a writable --run"."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = cli(capsys, "train", str(data), "--model", str(tiny_llama_dir), "--output-dir", str(blocker))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: cannot write in --output-dir")
    assert err.rstrip().endswith("pick a writable --output-dir") and "--run" not in err
    assert blocker.read_text() == "x"


def test_a_small_update_survives_the_save_the_next_round_trains_from(tmp_path, tiny_llama_dir):
    """Issue 19 §5: at lr 5e-7 the update is below bf16's spacing; the bf16 save kept almost none of it (the next
    round trained from the unchanged model). The float32 save keeps the trainer's weights as they are."""
    from safetensors.torch import load_file

    from prefdata.train import train

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    out = tmp_path / "out"
    train(data, str(tiny_llama_dir), out, loss_type="aipo", max_steps=2, save_strategy="no",
          **{**FAST, "learning_rate": 5e-7})  # fmt: skip
    start = {k: v.float() for k, v in load_file(tiny_llama_dir / "model.safetensors").items()}
    saved = load_file(out / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    moved = sum(int((saved[k] != w).sum()) for k, w in start.items())
    total = sum(w.numel() for w in start.values())
    assert moved / total > 0.5, f"only {moved / total:.1%} of the weights kept an update"
    # rounded to bf16 (what the save did before), almost nothing of the update is left
    kept_bf16 = sum(int((saved[k].to(torch.bfloat16).float() != w).sum()) for k, w in start.items())
    assert kept_bf16 / total < 0.2


def test_save_dtype_bfloat16_is_a_choice_for_publishing(tmp_path, tiny_llama_dir):
    from safetensors.torch import load_file

    from prefdata.train import train

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    train(data, str(tiny_llama_dir), tmp_path / "out", max_steps=1, save_strategy="no", save_dtype="bfloat16", **FAST)
    assert all(v.dtype == torch.bfloat16 for v in load_file(tmp_path / "out" / "model.safetensors").values())
    with pytest.raises(PrefdataError, match="save_dtype must be one of"):
        train(data, str(tiny_llama_dir), tmp_path / "o2", max_steps=1, save_dtype="fp8", **FAST)


def test_chunked_head_under_bf16_autocast_matches_float64():
    """Issue 19 item 6: under bf16 autocast the head's logits were rounded to bf16 (0.06-0.125 apart at the
    logit sizes of a trained model) before the float32 log-softmax, an error of ~0.1 nats per sequence. With no
    decoder layers nothing else runs in bf16, so the head's error alone is compared with a float64 forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefdata.train.data import sequence_logps

    cfg = LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=0, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 1.0)  # logits of a trained model's size: sd ~8, |max| ~30
    batch = PairCollator(0)(_random_pairs(cfg.vocab_size, 4))
    model64 = LlamaForCausalLM(cfg).double().eval()
    model64.load_state_dict(model.state_dict())
    c = batch["completion_mask"].shape[1]
    with torch.no_grad():
        logits = model64(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)).logits[:, -c - 1 : -1]
        per_token = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, -c:].unsqueeze(-1)).squeeze(-1)
        want = (per_token * batch["completion_mask"]).sum(-1)
        assert logits.abs().max() > 16  # where bf16's spacing is 0.125
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = sequence_logps(model, batch, 5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-3)
    # with grad: the same float32 values, and the gradient (recomputed in bf16, as autocast gives every layer) close
    # to float64's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_g, _ = sequence_logps(model, batch, 5)
    got_g.sum().backward()
    sequence_logps(model64, batch, 0)[0].sum().backward()
    torch.testing.assert_close(got_g.detach(), got)
    g, g64 = model.model.embed_tokens.weight.grad.double(), model64.model.embed_tokens.weight.grad
    assert torch.linalg.norm(g - g64) / torch.linalg.norm(g64) < 0.02
