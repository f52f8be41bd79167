"""Verifier judges: built-ins on tricky strings, user functions (ok, raising, None), and rank/export with them."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, export_run
from prefdata.judges import verifier as V
from prefdata.judges.verifier import (
    build_verifier,
    final_answer,
    last_number,
    verify_exact,
    verify_math,
    verify_number,
)
from prefdata.rank import RankConfig, rank_run, read_judgments, read_rankings
from prefdata.run.records import candidate_id
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


# Issue 19: answers of the kinds models write. Each of these scored the other way with the last-number rule.
ISSUE_CASES = [
    ("So the answer is 3/2.", "1/2", 0.0),  # was 1.0: the last number, 2, matched the reference's last number
    ("The result is 25, since 58 + 25 = 83.", "25", 1.0),  # was 0.0 (83)
    ("The answer is 18. She has 16 eggs and eats 3.", "18", 1.0),  # was 0.0 (3)
    (r"\boxed{1024}. (2 steps)", "1024", 1.0),  # was 0.0 (2)
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),  # was 0.0 (2 against 0.5)
]

NUMBER_CASES = [
    *ISSUE_CASES,
    # \boxed{}: it wins over everything else; several must agree; it must hold one plain number
    (r"Adding them gives \boxed{101}.", "101", 1.0),
    (r"$\boxed{-7}$", "-7", 1.0),
    (r"\boxed{1{,}024}", "1024", 1.0),
    (r"\boxed{x = 5}", "5", 1.0),
    (r"\boxed{\dfrac{3}{4}}", "0.75", 1.0),
    (r"\boxed{\$18}", "18", 1.0),
    (r"First \boxed{4}, checked: \boxed{4}", "4", 1.0),
    (r"\boxed{3} or \boxed{4}", "4", 0.0),  # two different boxed answers: a hedge
    (r"\boxed{3, 4}", "4", 0.0),
    (r"\boxed{2^{10}}", "1024", 0.0),  # an expression: not a plain number
    (r"The answer is 7, so \boxed{8}", "7", 0.0),  # the box beats the sentence
    # #### (GSM8K)
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18", "18", 1.0),
    ("#### 1,000\nThat was easy: 999 + 1.", "1000", 1.0),
    ("#### Step 1\n12 * 3 = 36", "36", 1.0),  # a markdown heading is not an answer line
    # "answer is", "answer:", "result is"
    ("The answer is -12.", "-12", 1.0),
    ("The answer is −12.", "-12", 1.0),  # unicode minus
    ("**Answer:** 42", "42", 1.0),
    ("Answer: $1,234.50", "1234.5", 1.0),
    ("The final result is 0.5, because 1/2 = 0.5 and 2/4 = 0.5.", "1/2", 1.0),
    ("The answer is $\\frac{3}{2}$ and not 1/2.", "1/2", 0.0),
    ("The answer is 3 or 4.", "3", 0.0),  # a hedge
    ("The answer is 58 + 25 = 83.", "83", 1.0),  # an equation after the marker: its result
    ("The answer is 58 + 25.", "83", 0.0),  # an unevaluated expression
    ("The answer is 2^{10}.", "2", 0.0),  # a power is not its base
    ("The answer is 5. Check: 5 * 2 = 10.", "10", 0.0),
    ("I think the answer is 12 (not 13).", "13", 0.0),
    # a final "=", then the last number
    ("37 + 64 = 101", "101", 1.0),
    ("37 + 64 = 101 (2 steps)", "101", 1.0),  # a closing remark in parentheses is left out
    ("x = −5", "-5", 1.0),
    ("10 - 15 = -5", "5", 0.0),  # the sign counts
    ("She has 18 eggs left.", "18", 1.0),  # units
    ("It costs $18.", "18", 1.0),
    ("In total 1,024 ways.", "1024", 1.0),  # thousands separator
    ("That is 1,024.", "1,024", 1.0),
    ("3.50", "3.5", 1.0),
    ("3.5", "35", 0.0),
    ("10-3", "3", 0.0),  # the question echoed is not an answer
    ("37 + 64", "101", 0.0),  # nor here, where verify:math scores it right (why the arithmetic demo uses verify:number)
    ("What is 3 + 4?", "4", 0.0),
    # percentages: equal to the number and to its hundredth
    ("The answer is 25%.", "25", 1.0),
    ("The answer is 25%.", "0.25", 1.0),
    ("The answer is 2.5%.", "25", 0.0),
    ("25", "25%", 1.0),
    # fractions by value, decimals exactly
    ("The answer is 6/4.", "3/2", 1.0),
    ("The answer is 1.5", r"\frac{3}{2}", 1.0),
    ("The answer is 0.33", "1/3", 0.0),
    ("The answer is 5/0.", "5", 0.0),
    # no number: a wrong answer, not an error
    ("I do not know.", "7", 0.0),
    ("", "7", 0.0),
    ("seven", "7", 0.0),
    # references written as solutions
    ("It is 72.", "She sold 48 + 24 = 72 clips.\n#### 72", 1.0),
    ("It is 48.", "She sold 48 + 24 = 72 clips.\n#### 72", 0.0),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), NUMBER_CASES)
def test_verify_number_reads_the_final_answer(completion, reference, expected):
    assert verify_number([], completion, reference) == expected


@pytest.mark.parametrize(("completion", "rule"), [
    (r"\boxed{5}", "boxed"), ("#### 5", "####"), ("Answer: 5", "anchor"), ("2 + 3 = 5", "equals"), ("It is 5 apples", "last"),
    ("no number", "none"),
])
def test_final_answer_names_the_rule_that_found_it(completion, rule):
    assert final_answer(completion).rule == rule


def test_a_reference_without_a_number_cannot_be_judged():
    assert verify_number([], "12", "no number here") is None
    assert verify_number([], "12", r"\boxed{3} or \boxed{4}") is None
    assert verify_math([], "12", "") is None


MATH_CASES = [
    *ISSUE_CASES,
    (r"\boxed{2^{10}}", "1024", 1.0),
    ("The answer is $2^{10}$.", "1024", 1.0),
    (r"The answer is $\frac{\sqrt{2}}{2}$.", r"\frac{1}{\sqrt{2}}", 1.0),
    (r"So $x = \frac{1}{2}$.", "0.5", 1.0),
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{3} or \boxed{4}", "4", 0.0),
    ("The answer is 1,024.", "1024", 1.0),
    (r"The answer is 1\,024.", "1024", 1.0),
    ("x = −5", "-5", 1.0),
    ("The answer is 25%.", "0.25", 1.0),
    ("It costs $18.", "18", 1.0),
    ("#### 72", "She sold 48 + 24 = 72 clips.\n#### 72", 1.0),
    (r"\boxed{(1, 2)}", "(1, 2)", 1.0),
    (r"\boxed{[0, 1)}", "[0, 1)", 1.0),
    (r"\boxed{x^2 + 2x + 1}", "(x+1)^2", 1.0),
    (r"\boxed{x^2 + 2x}", "(x+1)^2", 0.0),
    ("The answer is 3 or 4.", "3", 0.0),
    ("I do not know.", "7", 0.0),
    ("37 + 64", "101", 1.0),  # math-verify evaluates an echoed question (docs/verifiers.md)
]


@pytest.mark.parametrize(("completion", "reference", "expected"), MATH_CASES)
def test_verify_math_compares_by_value(completion, reference, expected):
    assert verify_math([], completion, reference) == expected


def test_verify_math_works_off_the_main_thread():
    """math-verify's timeouts use signal.alarm, which fails off the main thread; verify_math turns them off there."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda c: verify_math([], c[0], c[1]), [(r"\boxed{\frac{1}{2}}", "0.5"), ("The answer is 3/2", "1/2")]))
    assert got == [1.0, 0.0]


def test_math_verify_is_imported_only_when_verify_math_scores():
    code = ("import sys\nfrom prefdata.judges.verifier import build_verifier\n"
            "build_verifier('verify:number'); j = build_verifier('verify:math')\n"
            "assert 'math_verify' not in sys.modules\n"
            "print(j.fn([], 'The answer is 4', '4'), 'math_verify' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1.0", "True"]


def test_verify_math_without_the_package_is_one_error(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(PrefdataError, match="needs the math-verify package"):
        build_verifier("verify:math")


def test_builtin_descriptors_carry_a_version_so_changed_verdicts_get_a_new_judge_hash(tmp_path, monkeypatch):
    from importlib.metadata import version

    assert build_verifier("verify:number").config()["version"] == V.BUILTIN_VERSIONS["number"]
    assert build_verifier("verify:math").config()["version"].endswith(f"+math-verify-{version('math-verify')}")
    assert "version" not in build_verifier("verify:exact").config()  # unchanged verifier, unchanged hash
    run, _ = make_ref_run(tmp_path / "r", [("What is 2+3?", "5", ["It is 5.", "It is 6"])])
    first = rank_run(run, RankConfig(judge="verify:number", progress=False))
    from prefdata.rank import judge_identity
    from prefdata.run.records import stable_hash

    # the descriptor before the version was added (the last-number rule): that hash is not this one
    old = V.VerifierJudge("verify:number", verify_number)

    assert stable_hash(judge_identity(RankConfig(judge="verify:number"), old, "scores")) != first["judge_hash"]
    monkeypatch.setitem(V.BUILTIN_VERSIONS, "number", "test-next")
    again = rank_run(run, RankConfig(judge="verify:number", progress=False))
    assert again["judge_hash"] != first["judge_hash"] and again["judge_calls_new"] == 2  # scored afresh


def test_rank_with_verify_math(tmp_path):
    run, pids = make_ref_run(tmp_path / "r", [
        ("Half of one?", r"\frac{1}{2}", [r"\boxed{0.5}", "So the answer is 3/2.", r"It is $\frac{2}{4}$."]),
    ])
    s = rank_run(run, RankConfig(judge="verify:math", progress=False))
    assert s["failures"] == 0 and s["judge_calls_new"] == 3
    rk = read_rankings(run, s["judge_hash"]).row(0, named=True)
    scores = dict(zip(rk["candidate_ids"], rk["scores"], strict=True))
    assert [scores[candidate_id(pids[0], "s0", "sample", i)] for i in range(3)] == [1.0, 0.0, 1.0]
    assert rk["worst_id"] == candidate_id(pids[0], "s0", "sample", 1)


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
    ("verify:", "unknown verifier"),
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
