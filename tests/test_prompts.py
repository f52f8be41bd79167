"""Prompt reading: every format, stable ids, duplicates, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.run.prompts import load_prompts
from prefdata.run.records import prompt_id
from tests.conftest import SHARED_DATA


def test_bundled_mt_bench_first_turns():
    ps = load_prompts(None)
    assert ps.table.height == 80 and ps.field == "turns"
    first = json.loads((SHARED_DATA / "mt_bench_questions.jsonl").read_text().splitlines()[0])
    msgs = ps.table["messages"][0].to_list()
    assert msgs == [{"role": "user", "content": first["turns"][0]}]


def test_arena_hard_prompt_field():
    ps = load_prompts(SHARED_DATA / "arena_hard_v0.1_questions.jsonl")
    assert ps.field == "prompt"
    assert ps.table.height + ps.n_duplicates == 500
    assert ps.table["prompt_id"].n_unique() == ps.table.height


def test_formats_give_the_same_ids(tmp_path):
    rows = [{"prompt": "What is 2+2?", "x": 1}, {"prompt": "Name a color.", "x": 2}, {"prompt": "What is 2+2?", "x": 3}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "p.json").write_text(json.dumps(rows))
    pl.DataFrame(rows).write_parquet(tmp_path / "p.parquet")
    pl.DataFrame(rows).write_csv(tmp_path / "p.csv")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    msgs = [{"messages": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in msgs))
    expected = [prompt_id([{"role": "user", "content": "What is 2+2?"}]), prompt_id([{"role": "user", "content": "Name a color."}])]
    for name in ("p.jsonl", "p.json", "p.parquet", "p.csv", "ds", "m.jsonl"):
        ps = load_prompts(tmp_path / name)
        assert ps.table["prompt_id"].to_list() == expected, name
        assert ps.n_duplicates == 1, name


def test_system_prompt_changes_id_and_limit(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"}\n')
    plain = load_prompts(tmp_path / "p.jsonl")
    sys_ = load_prompts(tmp_path / "p.jsonl", system_prompt="Be brief.", limit=2)
    assert sys_.table.height == 2
    assert sys_.table["messages"][0].to_list()[0] == {"role": "system", "content": "Be brief."}
    assert sys_.table["prompt_id"][0] != plain.table["prompt_id"][0]


def test_messages_ending_with_answer_keep_the_prompt(tmp_path):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": conv}) + "\n")
    ps = load_prompts(tmp_path / "c.jsonl")
    assert ps.table["messages"][0].to_list() == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "content,field,needle",
    [
        ('{"prompt": "ok"}\n{"prompt": "fine"}\n{"prompt": oops}\n', None, "line 3"),
        ('{"prompt": "ok"}\n{"question_x": "no"}\n', "prompt", "missing field 'prompt'"),
        ('{"prompt": "ok"}\n{"prompt": "   "}\n', None, "row 2: field 'prompt' is empty"),
        ('{"foo": "bar"}\n', None, "no prompt field found"),
    ],
)
def test_bad_input_library_errors(tmp_path, content, field, needle):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(PrefdataError, match=needle):
        load_prompts(tmp_path / "bad.jsonl", field=field)


def test_missing_file(tmp_path):
    with pytest.raises(PrefdataError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "content,args,needle",
    [
        ('{"prompt": "ok"}\n{"prompt": oops}\n', [], "line 2 is not valid JSON"),
        ('{"prompt": "ok"}\n', ["--prompt-field", "text"], "missing field 'text'"),
        ('{"prompt": ""}\n', [], "is empty"),
        (None, [], "does not exist"),
        ('{"prompt": "ok"}\n', ["-n", "0"], "-n must be in [1, inf), got 0"),
        ('{"prompt": "ok"}\n', ["--backend", "tgi"], "backend must be one of"),
    ],
)
def test_bad_input_cli_one_line(tmp_path, content, args, needle):
    f = tmp_path / "bad.jsonl"
    if content is not None:
        f.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "prefdata.cli", "generate", str(f), "--run", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_bundled_arithmetic_sets_by_name_and_disjoint():
    from prefdata.run.prompts import BUNDLED_SETS

    train = load_prompts("arithmetic", reference_field="answer")
    evals = load_prompts("bundled:arithmetic-eval", reference_field="answer")
    assert train.table.height >= 2000 and evals.table.height >= 300
    assert train.table["reference"].null_count() == 0
    assert not set(train.table["prompt_id"]) & set(evals.table["prompt_id"])

    def problems(name: str) -> set[tuple[str, int, int]]:
        rows = [json.loads(x) for x in BUNDLED_SETS[name].read_text().splitlines()]
        for r in rows:  # the reference is the right answer
            assert int(r["answer"]) == {"+": r["a"] + r["b"], "-": r["a"] - r["b"], "*": r["a"] * r["b"]}[r["op"]]
        return {(r["op"], r["a"], r["b"]) for r in rows}

    assert not problems("arithmetic") & problems("arithmetic-eval")  # disjoint by problem, not only by phrasing
    with pytest.raises(PrefdataError, match="no bundled prompt set"):
        load_prompts("bundled:nope")


def test_make_arithmetic_is_reproducible(tmp_path):
    from pathlib import Path

    from prefdata.run.prompts import BUNDLED_SETS

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_arithmetic.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "arithmetic.jsonl").read_bytes() == BUNDLED_SETS["arithmetic"].read_bytes()
    assert (tmp_path / "arithmetic_eval.jsonl").read_bytes() == BUNDLED_SETS["arithmetic-eval"].read_bytes()
