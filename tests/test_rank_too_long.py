"""A judge prompt longer than the judge's context fails alone as too_long (never sent, never aborting a batch),
is counted in the rank summary, the rankings and the card, and its prompt is not exported."""

from __future__ import annotations

import polars as pl
import pytest

from prefdata.export import ExportConfig, export_run
from prefdata.judges.llm_judge import LLMPairJudge
from prefdata.judges.templates import load_template
from prefdata.llm.chat import ChatOut, fit_context
from prefdata.llm.context import TokenBudget
from prefdata.rank import RankConfig, rank_run, read_judgments, read_rankings
from tests.helpers import FaultServer, make_candidates_run, quality

LONG = "q=9 " + "very long answer " * 400  # about 1200+ tokens with the demo tokenizer


@pytest.fixture(scope="module")
def demo_tokenizer(demo_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def test_token_budget_counts_with_the_chat_template(demo_tokenizer):
    conv = [{"role": "user", "content": "What is two plus two?"}]
    n = TokenBudget(demo_tokenizer, 10_000).count(conv)
    assert n == len(demo_tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)["input_ids"])
    assert TokenBudget(demo_tokenizer, n + 8).too_long(conv, 8) is None
    reason = TokenBudget(demo_tokenizer, n + 7).too_long(conv, 8)
    assert reason and reason.startswith("too_long") and f"{n} tokens" in reason


def test_fit_context_sends_only_what_fits(demo_tokenizer):
    convs = [[{"role": "user", "content": t}] for t in ("short", LONG, "also short")]
    sent: list[list[list[dict[str, str]]]] = []

    def send(batch):
        sent.append(batch)
        return [ChatOut(text=f"ok {i}") for i in range(len(batch))]

    outs = fit_context(convs, TokenBudget(demo_tokenizer, 512), 16, send)
    assert sent == [[convs[0], convs[2]]]  # one batch, without the long one
    assert [o.text for o in outs] == ["ok 0", "", "ok 1"]
    assert outs[1].error and outs[1].error.startswith("too_long")


class BudgetBackend:
    """A ChatBackend with a real tokenizer budget that answers like a judge preferring the higher q=."""

    def __init__(self, tokenizer, max_len: int) -> None:
        self.budget = TokenBudget(tokenizer, max_len)
        self.sent = 0

    def config(self) -> dict[str, object]:
        return {"backend": "test-budget"}

    def chat(self, convs, sampling, **_):
        def answer(batch):
            self.sent += len(batch)
            out = []
            for c in batch:
                qa, qb = (int(x.split()[0]) for x in c[-1]["content"].split("q=")[1:3])
                out.append(ChatOut(text="[[A]]" if qa > qb else "[[B]]" if qb > qa else "[[C]]"))
            return out

        return fit_context(convs, self.budget, sampling.max_tokens, answer)


def test_too_long_counted_in_summary_rankings_card_and_skipped_by_export(tmp_path, demo_tokenizer):
    run, pids = make_candidates_run(tmp_path / "r", [["a q=1", "b q=3", LONG], ["c q=2", "d q=5"]])
    backend = BudgetBackend(demo_tokenizer, 1024)
    judge = LLMPairJudge(load_template("mt-bench-pair-v2"), backend, max_tokens=64)
    s = rank_run(run, RankConfig(strategy="round-robin", progress=False), judge=judge)
    assert s["too_long"] == 4 and s["failed_calls"] == 4  # both orders of the long one's two pairs
    assert backend.sent == s["judge_calls_new"] - 4  # the long calls were never sent
    j = read_judgments(run, s["judge_hash"])
    assert (j.filter(pl.col("verdict") == "fail")["error"].str.starts_with("too_long")).all()
    df = read_rankings(run, s["judge_hash"])
    assert df.filter(pl.col("prompt_id") == pids[0])["too_long"].item() == 4
    e = export_run(run, ExportConfig(out=str(tmp_path / "e")))
    assert e.drops["judge_failed"] == 1 and e.n_rows == 1 and e.judge_stats["too_long"] == 4
    card = (tmp_path / "e" / "README.md").read_text()
    assert "(`too_long`) | 4 |" in card


@pytest.mark.parametrize("tokenize", [True, False])
def test_openai_judge_checks_the_reported_context(tmp_path, tokenize):
    server = FaultServer()
    server.healthy = True
    server.max_model_len = 300
    server.tokenize = tokenize
    try:
        long_text = "q=9 " + "word " * 400
        run, pids = make_candidates_run(tmp_path / "r", [["x q=1", "y q=2", long_text]])
        s = rank_run(run, RankConfig(base_url=[server.url], strategy="round-robin", position_bias="fixed",
                                     max_tokens=16, progress=False))
        assert s["too_long"] == 2 and s["failed_calls"] == 2
        j = read_judgments(run, s["judge_hash"])
        errors = j.filter(pl.col("verdict") == "fail")["error"].to_list()
        assert all(e.startswith("too_long") for e in errors)
        if tokenize:  # counted first: the over-long requests never reached the chat endpoint
            assert max(server.chat_words) + 16 <= 300
        ok = j.filter(pl.col("verdict") != "fail")
        assert ok.height == 1 and quality(run.read_candidates().filter(
            pl.col("candidate_id") == ok["winner_id"].item())["text"].item()) == 2
    finally:
        server.close()


def test_in_process_vllm_judge_fails_only_the_long_call(tmp_path, vllm_llm):
    """Slow (starts a vLLM engine, max_model_len 1024): the long conversation no longer aborts its batch."""
    from prefdata.llm.vllm_model import VLLMChatModel

    run, pids = make_candidates_run(tmp_path / "r", [["a q=1", "b q=3", LONG], ["c q=2", "d q=5"]])
    judge = LLMPairJudge(load_template("verdict-only"), VLLMChatModel(vllm_llm, "tiny"), max_tokens=8)
    s = rank_run(run, RankConfig(strategy="round-robin", progress=False), judge=judge)
    j = read_judgments(run, s["judge_hash"])
    fails = j.filter(pl.col("verdict") == "fail")
    assert s["too_long"] == 4
    assert not fails["error"].str.contains("vLLM error").any()  # nothing else in the batch was aborted
    answered = j.filter(~pl.col("error").fill_null("").str.starts_with("too_long"))
    assert answered.height == j.height - 4 and (answered["raw"].str.len_chars() > 0).all()  # the engine replied
