"""Helpers for the rank tests: run directories built with the real store, and oracle judges.

Oracle judges are plain Python objects implementing the judge interface (judge(requests) -> verdicts); they
stand in for a judge's *opinion*, not for any external system.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl

from prefdata.judges.verdict import PairRequest, Verdict
from prefdata.records import candidate_id, prompt_id
from prefdata.store import MESSAGES_DTYPE, RunDir


def make_run(path: Path, texts_per_prompt: list[list[str]], questions: list[str] | None = None) -> tuple[RunDir, list[str]]:
    """A run directory with prompts.parquet, one candidates shard and run.json, as `generate` writes them."""
    run = RunDir(path)
    run.record_stage("generate", "test", {"note": "built by the test"})
    questions = questions or [f"Question number {i}?" for i in range(len(texts_per_prompt))]
    prows, crows, pids = [], [], []
    for q, texts in zip(questions, texts_per_prompt, strict=True):
        msgs = [{"role": "user", "content": q}]
        pid = prompt_id(msgs)
        pids.append(pid)
        prows.append({"prompt_id": pid, "messages": msgs, "source": json.dumps({"q": q}), "reference": None})
        for i, t in enumerate(texts):
            crows.append({
                "prompt_id": pid, "candidate_id": candidate_id(pid, "s0", "sample", i), "sampler_hash": "s0", "kind": "sample",
                "index": i, "text": t, "finish_reason": "stop", "n_tokens": len(t.split()), "model": "test",
            })
    run.write_prompts(pl.DataFrame(prows, schema={"prompt_id": pl.String, "messages": MESSAGES_DTYPE, "source": pl.String,
                                                  "reference": pl.String}))
    if crows:
        run.write_shard(run.candidates_dir, pl.DataFrame(crows))
    return run, pids


def quality(text: str) -> int:
    """Candidates in tests are named like 'cand q=7': the hidden true quality."""
    return int(text.split("q=")[1].split()[0])


class OrderJudge:
    """Prefers the higher hidden quality; equal quality is a tie. Optional noise flips a verdict."""

    def __init__(self, noise: float = 0.0, seed: int = 0) -> None:
        self.noise = noise
        self.rng = random.Random(seed)
        self.calls: list[tuple[str, str]] = []

    def config(self) -> dict[str, object]:
        return {"kind": "oracle-order", "noise": self.noise}

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        out = []
        for r in requests:
            self.calls.append((r.first.id, r.second.id))
            qa, qb = quality(r.first.text), quality(r.second.text)
            slot = "a" if qa > qb else "b" if qb > qa else "tie"
            if self.noise and slot != "tie" and self.rng.random() < self.noise:
                slot = "b" if slot == "a" else "a"
            out.append(Verdict.from_slot(r, slot, raw=f"oracle {slot}"))
        return out


class FirstJudge:
    """Always prefers whatever is shown first: pure position bias."""

    def __init__(self) -> None:
        self.calls = 0

    def config(self) -> dict[str, object]:
        return {"kind": "always-first"}

    def judge(self, requests: list[PairRequest]) -> list[Verdict]:
        self.calls += len(requests)
        return [Verdict.from_slot(r, "a", raw="[[A]]") for r in requests]


def test_make_run_roundtrip(tmp_path):
    run, pids = make_run(tmp_path / "r", [["cand q=1", "cand q=2"]])
    assert run.exists()
    assert run.read_candidates().height == 2
    assert run.read_prompts()["prompt_id"].to_list() == pids
