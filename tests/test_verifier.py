"""Verifier judges: built-ins on tricky strings, user functions (ok, raising, None), and rank/export with them."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, export_run
from prefdata.judges.verifier import build_verifier, last_number, verify_exact, verify_number
from prefdata.rank import RankConfig, rank_run, read_judgments, read_rankings
from prefdata.records import candidate_id
from tests.helpers import make_ref_run


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is 1,234.", "1234"),
    ("It costs $1,000,000 in total", "1000000"),
    ("-5", "-5"),
    ("so x = −12 apples", "-12"),  # unicode minus
    ("10-3 is 7", "7"),
    ("10-3", "3"),  # a binary minus is not a sign
    ("it is 3.50 dollars", "3.5"),
    ("42.", "42"),
    ("First 12, then 3,4", "4"),
    ("half is .5", "0.5"),
    ("version 1.2.3", "1.2"),
    ("23 + 45 = 68. Done!", "68"),
])
def test_last_number_on_tricky_strings(text, expected):
    from decimal import Decimal

    assert last_number(text) == Decimal(expected)


def test_verify_number_and_exact():
    m = [{"role": "user", "content": "What is 600 + 634?"}]
    assert verify_number(m, "600 + 634 = 1,234", "1234") == 1.0
    assert verify_number(m, "The sum is 1234.00 exactly", "1,234") == 1.0
    assert verify_number(m, "It is 1235", "1234") == 0.0
    assert verify_number(m, "I do not know", "1234") == 0.0  # no number: a wrong answer
    assert verify_number(m, "-7", "The answer is -7.") == 1.0
    assert verify_number(m, "7", "-7") == 0.0
    assert verify_number(m, "12", "no number here") is None  # the reference cannot be checked
    assert verify_exact(m, '  "Paris."  ', "paris") == 1.0
    assert verify_exact(m, "Paris,  France", "paris france") == 0.0
    assert verify_exact(m, "New   York!", "new york") == 1.0


def test_rank_with_verify_number_ties_correct_answers_and_counts_missing_references(tmp_path):
    run, pids = make_ref_run(tmp_path / "r", [
        ("What is 2+3?", "5", ["It is 5.", "The answer is 5", "It is 6"]),  # two correct: they tie
        ("What is 10-4?", "6", ["10-4 = 6", "4"]),
        ("What is 9*9?", "81", ["81", "eighty-one, i.e. 81"]),  # all correct: no pair
        ("Say hi", None, ["hi", "hello"]),  # no reference: counted and skipped
    ])
    s = rank_run(run, RankConfig(judge="verify:number", progress=False))
    assert s["strategy"] == "scores" and s["prompts_without_reference"] == 1
    assert s["prompts"] == 3 and s["judge_calls_new"] == 7 and s["failures"] == 0
    rk = read_rankings(run, s["judge_hash"])
    assert pids[3] not in rk["prompt_id"].to_list()
    by = {r["prompt_id"]: r for r in rk.iter_rows(named=True)}
    assert by[pids[0]]["ranks"] == [1, 1, 3] and by[pids[0]]["worst_id"] == candidate_id(pids[0], "s0", "sample", 2)
    assert by[pids[2]]["best_id"] is None  # equal scores are ties
    es = export_run(run, ExportConfig(out=str(tmp_path / "out")))
    assert es.n_rows == 2  # one pair each for the first two prompts, never two correct answers
    rows = pl.read_parquet(next((tmp_path / "out" / "data").glob("*.parquet")))
    assert set(rows["rejected"].list.first().struct.field("content").to_list()) == {"It is 6", "4"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "verify:number" in card
    # a rerun asks nothing again
    s2 = rank_run(run, RankConfig(judge="verify:number", progress=False))
    assert s2["judge_calls_new"] == 0 and s2["judge_hash"] == s["judge_hash"]


USER_FUNCS = '''
def length_score(messages, completion, reference):
    assert messages[-1]["role"] == "user"
    return float(len(completion))

def picky(messages, completion, reference):
    if "boom" in completion:
        raise ValueError("cannot parse " + completion)
    if "?" in completion:
        return None
    return 1.0 if completion.strip() == reference else 0.0
'''


def test_user_functions_ok_raising_and_none(tmp_path):
    f = tmp_path / "myjudge.py"
    f.write_text(USER_FUNCS)
    run, pids = make_ref_run(tmp_path / "r", [
        ("Q1", "yes", ["yes", "no", "boom here"]),
        ("Q2", "ok", ["ok?", "nope", "ok"]),
    ])
    s = rank_run(run, RankConfig(judge=f"python:{f}:picky", progress=False))
    assert s["judge_calls_new"] == 6 and s["call_failures_new"] == 2 and s["failures"] == 2
    j = read_judgments(run, s["judge_hash"])
    fails = j.filter(pl.col("verdict") == "fail").sort("error")
    assert fails["error"].to_list() == ["ValueError: cannot parse boom here", "cannot judge (the verifier returned None)"]
    rk = {r["prompt_id"]: r for r in read_rankings(run, s["judge_hash"]).iter_rows(named=True)}
    assert rk[pids[0]]["best_id"] == candidate_id(pids[0], "s0", "sample", 0)
    assert rk[pids[1]]["best_id"] == candidate_id(pids[1], "s0", "sample", 2)
    # the length function ranks by score like a reward model
    s_len = rank_run(run, RankConfig(judge=f"python:{f}:length_score", progress=False))
    rk = {r["prompt_id"]: r for r in read_rankings(run, s_len["judge_hash"]).iter_rows(named=True)}
    assert rk[pids[0]]["best_id"] == candidate_id(pids[0], "s0", "sample", 2)
    # editing the function file changes the judge hash (a new judgments folder, nothing mixed)
    f.write_text(USER_FUNCS + "\n# changed\n")
    assert rank_run(run, RankConfig(judge=f"python:{f}:picky", progress=False))["judge_hash"] != s["judge_hash"]


def test_module_function_spec(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "checks.py").write_text("def starts_yes(messages, completion, reference):\n    return float(completion.startswith(reference))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    j = build_verifier("python:mypkg.checks:starts_yes")
    assert j.config()["name"] == "python:mypkg.checks:starts_yes" and j.config()["source_sha256"]


@pytest.mark.parametrize(("spec", "msg"), [
    ("python:nofile.py:f", "does not exist"),
    ("python:justaname", "write python:FILE.py:FUNCTION"),
    ("python:no_such_module_xyz.sub:f", "could not be imported"),
    ("python:json:no_such_function", "has no function"),
    ("verify:fuzzy", "unknown verifier"),
])
def test_bad_specs_raise_one_clear_error(spec, msg):
    with pytest.raises(PrefdataError, match=msg):
        build_verifier(spec)


def test_cli_bad_python_spec_is_one_error_line(tmp_path):
    run, _ = make_ref_run(tmp_path / "r", [("Q", "1", ["1", "2"])])
    p = subprocess.run([sys.executable, "-m", "prefdata.cli", "rank", "--run", str(run.path), "--judge", "python:missing.py:f"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing.py" in lines[0]
    assert json.loads((run.path / "run.json").read_text())["stages"].get("rank") is None
