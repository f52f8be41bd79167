"""Issue 10.7: a generate that failed (unreachable server) leaves no sampler config behind, so a later
successful generate into the same run puts only its own sampler on the dataset card. Real parts: the CLI, a
closed port, the transformers backend with the tiny Llama, the tiny reward model as judge."""

from __future__ import annotations

import json
import socket
import sys

from prefdata.export import ExportConfig, export_run
from prefdata.rank import RankConfig, rank_run
from prefdata.run.store import RunDir
from tests.helpers import cand, cli, make_ranked_run


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failed_generate_config_never_reaches_the_card(tmp_path, tiny_llama_dir, tiny_rm_dir, capsys, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Say hi.", "Name a colour.")))
    run = tmp_path / "run"
    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    code, _, err = cli(capsys, "generate", str(prompts), "--run", str(run), "--backend", "openai", "--base-url", dead,
                       "--model", "served-x", "--max-retries", "0", "--quiet", as_argv=True)  # fmt: skip
    assert code == 2
    assert "cannot reach the server" in err
    assert not RunDir(run).read_meta().get("stages", {}).get("generate")  # no config without rows
    assert not RunDir(run).prompts_file.exists() and RunDir(run).read_candidates() is None

    assert cli(capsys, "generate", str(prompts), "--run", str(run), "--backend", "hf", "--model", str(tiny_llama_dir),
               "-n", "3", "--max-tokens", "6", "--temperature", "1.0", "--quiet", as_argv=True).code == 0  # fmt: skip
    gen = RunDir(run).read_meta()["stages"]["generate"]
    assert len(gen) == 1 and next(iter(gen.values()))["config"]["backend"] == "hf"
    monkeypatch.setattr(sys, "argv", ["prefdata", "rank"])  # what run.json records as the command line
    rank_run(RunDir(run), RankConfig(judge=str(tiny_rm_dir), progress=False))
    monkeypatch.setattr(sys, "argv", ["prefdata", "export"])
    export_run(RunDir(run), ExportConfig(out=str(tmp_path / "out"), keep_truncated=True))  # 6 tokens: all cut
    card = (tmp_path / "out" / "README.md").read_text()
    assert "backend: hf" in card and "--backend hf" in card
    for needle in (dead, "backend: openai", "served-x", "--backend openai"):
        assert needle not in card, needle


def test_card_lists_only_samplers_behind_the_rows(tmp_path):
    """A run.json written before the fix (a failed sampler's config recorded without rows) still gives a
    clean card: only samplers whose completions are in the exported rows are listed."""
    run = make_ranked_run(tmp_path / "run", [("q", [cand("good answer here", 1, 2.0), cand("bad", 2, 1.0)])])
    run.record_stage("generate", "failedsampler000", {"config": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                                                      "model": "ghost-model"})  # fmt: skip
    s = export_run(run, ExportConfig(out=str(tmp_path / "out")))
    card = (tmp_path / "out" / "README.md").read_text()
    assert s.sampler_hashes == ["samplerhash00001"]
    assert "Sampler `samplerhash00001`" in card
    assert "failedsampler000" not in card and "ghost-model" not in card and "127.0.0.1:9" not in card
