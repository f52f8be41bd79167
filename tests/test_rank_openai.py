"""The OpenAI-compatible judge against real HTTP servers: a faulty one written here, and real vLLM.

The faulty server is a small real HTTP server on 127.0.0.1 speaking the chat-completions JSON. It judges by
the hidden quality in the candidate texts, and for chosen requests answers 500 once, sends garbage once,
replies without a verdict (repair path), or fails every time (until it is "fixed" for the rerun).
"""

from __future__ import annotations

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.rank import RankConfig, rank_run, read_judgments, read_rankings
from tests.helpers import FaultServer, make_candidates_run, quality, quality_texts


@pytest.fixture
def fault_servers():
    servers = [FaultServer(), FaultServer()]
    yield servers
    for s in servers:
        s.close()


def test_faulty_endpoints_retried_recorded_and_resumed(tmp_path, fault_servers):
    qs = [[3, 1, 4, 2], [5, 9, 2], [1, 6, 3, 8, 2]]
    run, pids = make_candidates_run(tmp_path / "r", [quality_texts(q) for q in qs])
    cfg = RankConfig(judge="mt-bench-pair-v2", base_url=[s.url for s in fault_servers], max_retries=2, backoff_s=0.01,
                     concurrency=4, batch_size=8, progress=False)
    s1 = rank_run(run, cfg)
    j1 = read_judgments(run, s1["judge_hash"])
    assert all(s.requests for s in fault_servers)  # load spread over both URLs
    fails = j1.filter(pl.col("verdict") == "fail")
    assert fails.height > 0 and s1["failures"] > 0
    assert fails["error"].str.contains("gave up after 3 attempts").all()
    repaired = j1.filter(pl.col("repaired"))
    assert repaired.height > 0 and repaired["raw"].str.contains("<<<repair>>>").all()
    assert (repaired["verdict"] != "fail").all()
    assert (j1.filter(pl.col("verdict") != "fail")["attempts"] >= 1).all()
    ok_keys = {(r["a_id"], r["b_id"]) for r in j1.filter(pl.col("verdict") != "fail").iter_rows(named=True)}
    # the rerun against fixed servers asks only what failed, and completes the ranking
    for s in fault_servers:
        s.healthy = True
        s.requests.clear()
    s2 = rank_run(run, cfg)
    assert s2["judge_hash"] == s1["judge_hash"]
    assert s2["failures"] == 0 and s2["judge_calls_new"] >= fails.height
    j2 = read_judgments(run, s2["judge_hash"])
    assert j2.height == j1.height + s2["judge_calls_new"]  # nothing lost, nothing rewritten
    new_rows = j2.tail(s2["judge_calls_new"])
    assert not ({(r["a_id"], r["b_id"]) for r in new_rows.iter_rows(named=True)} & ok_keys)
    df = read_rankings(run, s2["judge_hash"])
    cands = run.read_candidates()
    text_of = dict(zip(cands["candidate_id"], cands["text"], strict=True))
    for pid, q in zip(pids, qs, strict=True):
        row = df.filter(pl.col("prompt_id") == pid).row(0, named=True)
        assert quality(text_of[row["best_id"]]) == max(q) and quality(text_of[row["worst_id"]]) == min(q)
        assert row["consistency"] == 1.0
    s3 = rank_run(run, cfg)
    assert s3["judge_calls_new"] == 0


def test_unreachable_server_is_one_clear_error(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run, _ = make_candidates_run(tmp_path / "r", [quality_texts([1, 2])])
    with pytest.raises(PrefdataError, match="cannot reach the judge server"):
        rank_run(run, RankConfig(base_url=[f"http://127.0.0.1:{port}/v1"], progress=False))


def test_cli_rank_against_fault_server(tmp_path, fault_servers, capsys):
    from prefdata.cli import main

    fault_servers[0].healthy = True
    run, _ = make_candidates_run(tmp_path / "r", [quality_texts([2, 7, 1])])
    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(run.path), "--judge", "verdict-only", "--base-url", fault_servers[0].url,
              "--position-bias", "random", "--strategy", "round-robin", "--no-progress"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "ranked 1 prompts" in out
    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(tmp_path / "missing"), "--judge", "verdict-only", "--base-url", fault_servers[0].url])
    assert e.value.code == 2
    assert "not a prefdata run" in capsys.readouterr().err


def test_requests_per_minute_limit(tmp_path, fault_servers):
    import time

    fault_servers[0].healthy = True
    run, _ = make_candidates_run(tmp_path / "r", [quality_texts([3, 1, 2, 5])])
    cfg = RankConfig(base_url=[fault_servers[0].url], requests_per_minute=600, strategy="round-robin",
                     position_bias="fixed", progress=False)
    t0 = time.monotonic()
    s = rank_run(run, cfg)
    assert s["judge_calls_new"] == 6 and time.monotonic() - t0 >= 5 * 0.1 * 0.95  # 10 per second at most


def test_cli_yaml_config_and_flags(tmp_path, fault_servers, capsys):
    from prefdata.cli import main

    fault_servers[0].healthy = True
    run, _ = make_candidates_run(tmp_path / "r", [quality_texts([2, 7, 1])])
    conf = tmp_path / "rank.yaml"
    conf.write_text(f"judge: arena-hard-style\nbase_url: {fault_servers[0].url}\nstrategy: round-robin\nposition_bias: fixed\n")
    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(run.path), "--config", str(conf), "--position-bias", "both", "--no-progress"])
    # the fault server answers in mt-bench's [[A]] style, which arena-hard's rule cannot read: every call fails,
    # so rank ends with exit 3 (failed calls remain) and says how to retry
    assert e.value.code == 3
    assert "run the same command again" in capsys.readouterr().err
    meta = run.read_meta()["stages"]["rank"]
    (entry,) = meta.values()
    assert entry["config"]["judge"] == "arena-hard-style" and entry["config"]["position_bias"] == "both"
    assert entry["template"] == "arena-hard-style" and entry["counts"]["comparisons"] == 6
    conf.write_text("strategy: best-of\n")
    with pytest.raises(SystemExit) as e:
        main(["rank", "--run", str(run.path), "--config", str(conf)])
    assert e.value.code == 2 and "strategy must be" in capsys.readouterr().err


@pytest.mark.slow
def test_openai_judge_on_real_vllm_server(tmp_path, vllm_server):
    qs = [[1, 2, 3], [4, 5]]
    texts = [["Paris is the capital of France.", "The capital of France is Lyon.", "I like turtles."],
             ["2 + 2 = 4.", "2 + 2 = 5."]]
    run, _ = make_candidates_run(tmp_path / "r", texts, ["What is the capital of France?", "What is 2 + 2?"])
    assert len(qs) == len(texts)
    cfg = RankConfig(judge="mt-bench-pair-v2", base_url=[vllm_server["base_url"]], judge_model=vllm_server["model"],
                     max_tokens=48, progress=False)
    s = rank_run(run, cfg)
    j = read_judgments(run, s["judge_hash"])
    assert j.height == s["judge_calls_new"] > 0
    assert set(j["verdict"].to_list()) <= {"a", "b", "tie", "fail"}
    assert (j["raw"].str.len_chars() > 0).all()  # the judge's text is kept, also for failures
    assert s["comparisons"] <= 2 * (2 * 2 + 2 * 1)
    df = read_rankings(run, s["judge_hash"])
    assert df.height == 2
    meta = run.read_meta()["stages"]["rank"][s["judge_hash"]]
    assert meta["identity"]["judge"]["model"] == "demo" and meta["template_sha256"]
    # logprob mode: one token, P(first) kept as the score
    lp = rank_run(run, RankConfig(judge="verdict-only", base_url=[vllm_server["base_url"]], logprobs=True, progress=False))
    assert lp["judge_hash"] != s["judge_hash"]
    jl = read_judgments(run, lp["judge_hash"])
    ok = jl.filter(pl.col("verdict") != "fail")
    assert ok.height > 0 and ok["score"].is_between(0.0, 1.0).all()
    assert (jl.filter(pl.col("verdict") == "fail")["error"].str.starts_with("logprob")).all()
