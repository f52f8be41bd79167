"""Judge templates, verdict parsing, logprob mode and judge-eval (no model needed except where marked slow)."""

from __future__ import annotations

import json

import pytest

from prefdata.errors import PrefdataError
from prefdata.eval.judge_eval import JudgeEvalConfig, evaluate, split_transcript
from prefdata.judges.llm_judge import LLMPairJudge
from prefdata.judges.templates import available_templates, load_template
from prefdata.judges.verdict import Candidate, PairRequest, Verdict
from prefdata.llm.chat import ChatOut
from tests.conftest import SHARED_DATA
from tests.helpers import make_candidates_run

REQ = PairRequest("p", (("user", "What is {x}?"),), Candidate("id1", "ans {one}"), Candidate("id2", "ans two"))


def test_shipped_templates_load_and_render():
    names = available_templates()
    assert {"mt-bench-pair-v2", "arena-hard-style", "verdict-only"} <= set(names)
    for n in names:
        t = load_template(n)
        msgs = t.render(REQ)
        assert "ans {one}" in msgs[-1]["content"] and "What is {x}?" in msgs[-1]["content"]  # braces in data are safe
        assert len(t.sha256) == 64


def test_pair_v2_is_mt_bench_verbatim():
    row = next(json.loads(line) for line in open(SHARED_DATA / "mt_bench_judge_prompts.jsonl") if '"pair-v2"' in line)
    t = load_template("mt-bench-pair-v2")
    assert t.system == row["system_prompt"] and t.user == row["prompt_template"]


@pytest.mark.parametrize(("name", "text", "slot"), [
    ("mt-bench-pair-v2", "A is more detailed. Final verdict: [[A]]", "a"),
    ("mt-bench-pair-v2", "[[C]]", "tie"),
    ("mt-bench-pair-v2", "I pick [[A]]... no wait [[B]]", None),  # conflicting: not trusted
    ("mt-bench-pair-v2", "Assistant B is better.", None),
    ("arena-hard-style", "My final verdict is [[B>>A]]", "b"),
    ("arena-hard-style", "[[A=B]]", "tie"),
    ("arena-hard-style", "[[A>B]] and again [[A>>B]]", "a"),
    ("verdict-only", "B", "b"),
    ("verdict-only", " A.", "a"),
    ("verdict-only", "Because", None),
])
def test_verdict_rules(name, text, slot):
    got, err = load_template(name).rule.parse(text)
    assert got == slot and (err is None) == (slot is not None)


def test_unknown_template_is_a_clear_error(tmp_path):
    with pytest.raises(PrefdataError, match="unknown judge"):
        load_template("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsystem: s\n")
    with pytest.raises(PrefdataError, match="lacks field"):
        load_template(str(bad))


class ScriptedBackend:
    """Replies from a script, like a server would; records what it was sent."""

    def __init__(self, replies: list[ChatOut]) -> None:
        self.replies = replies
        self.sent: list[list[dict[str, str]]] = []

    def config(self) -> dict[str, object]:
        return {"backend": "scripted", "model": "s"}

    def chat(self, convs, sampling, **_):
        self.sent.extend(convs)
        out, self.replies = self.replies[: len(convs)], self.replies[len(convs):]
        return out


def test_repair_follow_up_then_failure_keeps_raw():
    t = load_template("mt-bench-pair-v2")
    be = ScriptedBackend([ChatOut("hmm"), ChatOut("[[B]]"), ChatOut("still nothing"), ChatOut("no")])
    j = LLMPairJudge(t, be)
    v1, v2 = j.judge([REQ, REQ])
    # round 1 answers both calls ("hmm", "[[B]]"); only the first is repaired ("still nothing") and fails
    assert (v1.verdict, v2.verdict) == ("fail", "b") and v1.repaired and not v2.repaired and len(be.sent) == 3
    be = ScriptedBackend([ChatOut("no verdict here"), ChatOut("[[B]]")])
    (v,) = LLMPairJudge(t, be).judge([REQ])
    assert v.verdict == "b" and v.winner_id == "id2" and v.repaired and "no verdict here" in v.raw
    assert be.sent[1][-1]["content"] == t.repair and be.sent[1][-2]["content"] == "no verdict here"
    be = ScriptedBackend([ChatOut("nothing"), ChatOut("nothing again")])
    (v,) = LLMPairJudge(t, be).judge([REQ])
    assert v.verdict == "fail" and "after repair" in (v.error or "") and "nothing again" in v.raw
    be = ScriptedBackend([ChatOut(error="HTTP 400: too long")])
    (v,) = LLMPairJudge(t, be).judge([REQ])
    assert v.verdict == "fail" and v.error == "HTTP 400: too long" and len(be.sent) == 1  # transport errors are not "repaired"


def test_logprob_mode():
    t = load_template("verdict-only")
    import math

    def out(pa, pb):
        return ChatOut("A", top_logprobs={"A": math.log(pa), " B": math.log(pb), "C": math.log(0.01)})

    be = ScriptedBackend([out(0.8, 0.2), out(0.3, 0.6), out(0.41, 0.39), ChatOut("x", top_logprobs={"x": -0.1})])
    v = LLMPairJudge(t, be, logprobs=True, tie_band=0.05).judge([REQ] * 4)
    assert [x.verdict for x in v] == ["a", "b", "tie", "fail"]
    assert v[0].score == pytest.approx(0.8) and v[1].winner_id == "id2"
    with pytest.raises(PrefdataError, match="logprob_labels"):
        LLMPairJudge(load_template("mt-bench-pair-v2"), be, logprobs=True)


def test_split_hh_transcript():
    m, a, b = split_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: well", "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: badly")
    assert m == (("user", "hi"), ("assistant", "hello"), ("user", "how?")) and (a, b) == ("well", "badly")


class LongerJudge:
    """Prefers the longer answer: a known bias, deterministic."""

    def config(self):
        return {"kind": "longer"}

    def judge(self, requests):
        def slot(a: str, b: str) -> str:
            return "a" if len(a) > len(b) else "b" if len(b) > len(a) else "tie"

        return [Verdict.from_slot(r, slot(r.first.text, r.second.text)) for r in requests]


def test_judge_eval_on_hh_rlhf(tmp_path):
    cfg = JudgeEvalConfig(data=str(SHARED_DATA / "hh_rlhf_helpful_test_300.jsonl"), limit=40, progress=False,
                          out=str(tmp_path / "ev.json"))
    s = evaluate(cfg, judge=LongerJudge())
    assert s["rows"] == 40 and s["consistency"] == 1.0 and s["first_wins"] == pytest.approx(0.5)
    assert 0.0 < s["agreement"] < 1.0 and s["agreement"] + s["disagreement"] + s["tie_rate"] == pytest.approx(1.0)
    assert (tmp_path / "ev.parquet").is_file()
    with pytest.raises(PrefdataError, match="not found"):
        evaluate(JudgeEvalConfig(data=str(tmp_path / "none.jsonl")), judge=LongerJudge())


def test_in_process_vllm_judge(tmp_path, vllm_llm):
    from prefdata.rank import RankConfig, rank_run, read_judgments

    run, _ = make_candidates_run(tmp_path / "r", [["Paris.", "Lyon.", "Rome."], ["4", "5"]])
    s = rank_run(run, RankConfig(judge="verdict-only", max_tokens=4, progress=False), llm=vllm_llm)
    j = read_judgments(run, s["judge_hash"])
    assert j.height == s["judge_calls_new"] > 0 and set(j["verdict"]) <= {"a", "b", "tie", "fail"}
    # a random tiny model rarely writes a verdict: failures are recorded with the raw text and repair attempt
    assert (j.filter(j["verdict"] == "fail")["raw"].str.contains("<<<repair>>>")).all()
    lp = rank_run(run, RankConfig(judge="verdict-only", logprobs=True, progress=False), llm=vllm_llm)
    assert read_judgments(run, lp["judge_hash"]).height == lp["judge_calls_new"]
