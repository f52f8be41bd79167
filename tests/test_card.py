"""The dataset card: Hub metadata, provenance, statistics, the plot, and no secrets anywhere."""

from __future__ import annotations

import re
import sys

import yaml

from prefdata.export import ExportConfig, export_run
from prefdata.export.card import size_category
from prefdata.secrets import redact, scrub
from tests.helpers import JUDGE, SAMPLER, cand, four, make_ranked_run

SECRET = "sk-test-9f8e7d6c5b4a39281706"
HF_SECRET = "hf_AbCdEfGhIjKlMnOpQrStUv"


def _front(text: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "card has no YAML front matter"
    return yaml.safe_load(m.group(1))


def test_card_fields(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prefdata", "export", "--run", "runs/x", "--pairs", "all", "--test-size", "0.5"])
    prompts = [("q", four()), ("q2", four("x ")), ("tied", [cand("u", 1), cand("v", 1)])]
    run = make_ranked_run(tmp_path / "run", prompts)
    cfg = ExportConfig(pairs="all", test_size=0.5, seed=2, license="apache-2.0", tags=["mt-bench"],
                       pretty_name="Tiny prefs")  # seed 2 puts q and q2 on different sides of the split
    s = export_run(run, cfg)
    text = (tmp_path / "run" / "exports" / f"{JUDGE}-all" / "README.md").read_text()
    fm = _front(text)
    assert fm["license"] == "apache-2.0" and fm["pretty_name"] == "Tiny prefs"
    assert {"prefdata", "dpo", "mt-bench"} <= set(fm["tags"])
    assert fm["task_categories"] == ["text-generation"] and fm["size_categories"] == ["n<1K"]
    assert fm["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"}, {"split": "test", "path": "data/test-*.parquet"}]}]  # fmt: skip
    for needle in (
        f"Sampler `{SAMPLER}`", "Model: `tiny-model`", "temperature: 0.8",  # sampler config and model
        "Judge model: `judge-model`", "`pairwise-v1`", "ab" * 32,  # judge model, template and its hash
        "Position-bias policy: `position_bias: both`",
        "| ties | 3 (16.7%) |", "| failures | 0 (0.0%) |", "| mean consistency | 0.800 |",
        "`tie`) | 1 |",  # drop table: the tied prompt gives one tied pair
        "![chosen vs rejected length](lengths.png)", "| chosen |", "| rejected |",
        "prefdata export --run runs/x --pairs all --test-size 0.5",  # exact command line
        "prefdata version: `0.1.0`",
    ):  # fmt: skip
        assert needle in text, needle
    png = tmp_path / "run" / "exports" / f"{JUDGE}-all" / "lengths.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lengths.png" in s.files


def test_no_secret_reaches_the_card(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("MY_JUDGE_TOKEN", "plainsecretvalue123")
    monkeypatch.setattr(sys, "argv", ["prefdata", "export", "--run", "r", "--api-key", SECRET, f"--hf-token={HF_SECRET}"])
    rank_config = {
        "model": "judge-model", "base_url": "http://127.0.0.1:8000/v1", "api_key": SECRET,
        "headers": {"Authorization": f"Bearer {HF_SECRET}"}, "extra": "plainsecretvalue123",
        "max_tokens": 256, "position_bias": "both",
    }  # fmt: skip
    run = make_ranked_run(tmp_path / "run", [("q", four())], rank_config=rank_config)
    # a rank command recorded with a secret in it, as a careless wrapper might
    run.update_meta(lambda m: m["stages"]["rank"][JUDGE]["commands"].append(f"prefdata rank --judge-api-key {SECRET}"))
    s = export_run(run, ExportConfig(out=str(tmp_path / "out")))
    everything = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    for secret in (SECRET, HF_SECRET, "plainsecretvalue123"):
        assert secret.encode() not in everything
    text = (tmp_path / "out" / "README.md").read_text()
    assert "max_tokens: 256" in text  # not mistaken for a secret
    assert "--api-key ***" in text and "--judge-api-key ***" in text
    assert s.n_rows == 1


def test_scrub_and_redact_units():
    assert scrub({"api_key": "x", "max_tokens": 5, "n": {"hf_token": "y"}, "key": None}) == {
        "api_key": "***", "max_tokens": 5, "n": {"hf_token": "***"}, "key": None}  # fmt: skip
    assert redact("run --verbose --api-key abc --max-tokens 64") == "run --verbose --api-key *** --max-tokens 64"
    assert size_category(999) == "n<1K" and size_category(1000) == "1K<n<10K" and size_category(2_000_000) == "1M<n<10M"
