"""Measure a judge against human preference labels (HH-RLHF style chosen/rejected transcripts).

Each row is judged in both orders (chosen first, then rejected first). Reported:
- agreement: the pair outcome (both orders folded as in `rank`: disagreement is a tie) names the human-chosen
  answer; ties and failures count as not agreeing, and their rates are reported beside it;
- call_accuracy: single calls that name the chosen answer (what a `fixed`/`random` policy would get);
- consistency: pairs whose two orders agree, among pairs where both calls succeeded;
- first_wins: share of decisive calls won by the answer shown first (position bias; 0.5 is unbiased).
A reward-model judge scores both answers: agreement = chosen scored higher.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from prefdata.errors import PrefdataError
from prefdata.judges.config import judge_field, to_judge_config
from prefdata.judges.verdict import Candidate, PairJudge, PairRequest, PointwiseJudge, ScoreRequest
from prefdata.options import opt
from prefdata.rank.ranking import combine
from prefdata.summary import RecordSummary

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclass
class JudgeEvalConfig:
    """Config of `prefdata judge-eval`; its judge fields are JudgeConfig's (`judge_field`)."""

    data: str = opt("", "JSONL with `chosen` and `rejected` transcripts (HH-RLHF format).")
    judge: str = judge_field("judge")
    judge_model: str | None = judge_field("judge_model")
    base_url: list[str] = judge_field("base_url")
    logprobs: bool = judge_field("logprobs")
    tie_band: float = judge_field("tie_band")
    temperature: float = judge_field("temperature")
    max_tokens: int | None = judge_field("max_tokens")
    concurrency: int = judge_field("concurrency")
    limit: int | None = opt(None, "Evaluate only the first N rows.")
    batch_size: int = opt(64, "Judge calls per batch.")
    out: str | None = opt(None, "Write per-row results (.parquet) and the summary (.json) here.")
    progress: bool = opt(True, "Show the progress bar.")


def split_transcript(chosen: str, rejected: str) -> tuple[tuple[tuple[str, str], ...], str, str]:
    """Shared prompt (as messages) and the two final assistant answers."""
    cut = chosen.rfind(ASSISTANT)
    if cut < 0 or rejected[:cut] != chosen[:cut] or not rejected[cut:].startswith(ASSISTANT):
        raise ValueError("chosen and rejected do not share a prompt ending in an Assistant turn")
    prefix = chosen[:cut]
    a = chosen[cut + len(ASSISTANT):].strip()
    b = rejected[cut + len(ASSISTANT):].strip()
    messages: list[tuple[str, str]] = []
    rest = prefix
    while rest:
        h, a_ = rest.find(HUMAN), rest.find(ASSISTANT)
        starts = [(i, r, m) for i, r, m in ((h, "user", HUMAN), (a_, "assistant", ASSISTANT)) if i >= 0]
        if not starts:
            break
        i, role, marker = min(starts)
        rest = rest[i + len(marker):]
        nxt = [j for j in (rest.find(HUMAN), rest.find(ASSISTANT)) if j >= 0]
        end = min(nxt) if nxt else len(rest)
        messages.append((role, rest[:end].strip()))
        rest = rest[end:]
    return tuple(messages), a, b


def read_labeled_pairs(path: str, limit: int | None) -> list[tuple[tuple[tuple[str, str], ...], str, str]]:
    p = Path(path)
    if not path or not p.is_file():
        raise PrefdataError(f"judge-eval data {path!r} not found; pass --data FILE.jsonl with chosen/rejected rows")
    rows = []
    with open(p) as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(rows) >= limit:
                break
            try:
                d = json.loads(line)
                rows.append(split_transcript(d["chosen"], d["rejected"]))
            except (json.JSONDecodeError, KeyError, ValueError) as e:
                raise PrefdataError(f"{p}:{n}: not a chosen/rejected transcript row ({e})") from e
    if not rows:
        raise PrefdataError(f"{p} has no rows")
    return rows


@dataclass(eq=False)
class JudgeEvalSummary(RecordSummary):
    """The agreement record (call-level measures only for a pairwise judge), printed as the JSON it is."""

    def lines(self) -> list[str]:
        return json.dumps(self.record, indent=2).splitlines()


def evaluate(cfg: JudgeEvalConfig, llm: Any = None, judge: PairJudge | PointwiseJudge | None = None) -> JudgeEvalSummary:
    from prefdata.console import progress
    from prefdata.judges.build import build_judge

    pairs = read_labeled_pairs(cfg.data, cfg.limit)
    if judge is None:
        judge = build_judge(to_judge_config(cfg), llm)
    t0 = time.monotonic()
    records: list[dict[str, Any]] = []
    bar = progress(len(pairs), "judge-eval", "pair", disable=not cfg.progress)
    for s in range(0, len(pairs), max(1, cfg.batch_size // 2)):
        chunk = pairs[s : s + max(1, cfg.batch_size // 2)]
        if isinstance(judge, PairJudge):
            reqs = []
            for i, (msgs, ch, rj) in enumerate(chunk):
                c, r = Candidate(f"chosen-{s + i}", ch), Candidate(f"rejected-{s + i}", rj)
                reqs += [PairRequest(str(s + i), msgs, c, r), PairRequest(str(s + i), msgs, r, c)]
            vs = judge.judge(reqs)
            for i in range(len(chunk)):
                v1, v2 = vs[2 * i], vs[2 * i + 1]
                o = combine((v1.a_id, v1.b_id), [v1, v2])
                records.append({
                    "row": s + i, "outcome": "fail" if o.fail else "tie" if o.tie else ("chosen" if o.winner == v1.a_id else "rejected"),
                    "inconsistent": o.inconsistent, "both_ok": o.both_orders,
                    "call1": v1.verdict, "call2": v2.verdict, "raw1": v1.raw, "raw2": v2.raw,
                    "score1": v1.score, "score2": v2.score,
                })
        else:
            reqs_s = []
            for i, (msgs, ch, rj) in enumerate(chunk):
                reqs_s += [ScoreRequest(str(s + i), msgs, Candidate("c", ch)), ScoreRequest(str(s + i), msgs, Candidate("r", rj))]
            res = judge.score(reqs_s)
            for i in range(len(chunk)):
                sc, sr = res[2 * i].score, res[2 * i + 1].score
                outcome = "fail" if sc is None or sr is None else "chosen" if sc > sr else "rejected" if sr > sc else "tie"
                records.append({"row": s + i, "outcome": outcome, "inconsistent": False, "both_ok": False, "call1": None,
                                "call2": None, "raw1": "", "raw2": "", "score1": sc, "score2": sr})
        bar.update(len(chunk))
    bar.close()
    df = pl.DataFrame(records)
    n = df.height
    summary: dict[str, Any] = {
        "judge": judge.config(), "data": Path(cfg.data).name, "rows": n, "elapsed_s": round(time.monotonic() - t0, 2),
        "agreement": float((df["outcome"] == "chosen").sum() / n),
        "disagreement": float((df["outcome"] == "rejected").sum() / n),
        "tie_rate": float((df["outcome"] == "tie").sum() / n),
        "failure_rate": float((df["outcome"] == "fail").sum() / n),
    }
    if isinstance(judge, PairJudge):
        calls = [(c, "a") for c in df["call1"]] + [(c, "b") for c in df["call2"]]  # chosen is slot a in call1, b in call2
        decisive = [(c, want) for c, want in calls if c in ("a", "b")]
        summary["call_accuracy"] = sum(c == want for c, want in calls) / len(calls)
        summary["call_failure_rate"] = sum(c == "fail" for c, _ in calls) / len(calls)
        summary["first_wins"] = (sum(c == "a" for c, _ in decisive) / len(decisive)) if decisive else None
        both = int(df["both_ok"].sum())
        summary["consistency"] = float(((df["both_ok"]) & (~df["inconsistent"])).sum() / both) if both else None
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(out.with_suffix(".parquet"))
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return JudgeEvalSummary(summary)
