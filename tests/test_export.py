"""export_run end to end on small run directories: round trips through `datasets`, filters, shapes, splits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import datasets
import polars as pl
import pytest

from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, export_run, split_point, split_prompt_ids
from prefdata.export.folder import MANIFEST
from prefdata.run.store import RunDir
from tests.helpers import JUDGE, cand, four, make_ranked_run


def _load(folder) -> datasets.DatasetDict:
    return datasets.load_dataset(str(folder), cache_dir=str(folder.parent / ".hf-cache"))


def test_round_trip_parquet_matches_written_rows(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q1", four()), ("q2", four("x ")), ("q3", four("y "))])
    s = export_run(run, ExportConfig())
    out = tmp_path / "run" / "exports" / f"{JUDGE}-best-worst"
    assert s.out == str(out) and s.n_rows == 3 and s.splits == {"train": 3}
    ds = _load(out)
    assert list(ds) == ["train"]
    rows = ds["train"].to_list()
    written = pl.read_parquet(out / "data" / "train-00000-of-00001.parquet").to_dicts()
    assert rows == written
    r = rows[0]
    assert r["prompt"] == [{"role": "user", "content": "q1"}]
    assert r["chosen"] == [{"role": "assistant", "content": "best answer with many words here"}]
    assert r["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert (r["chosen_score"], r["rejected_score"], r["margin"]) == (4.0, 1.0, 3.0)
    assert (r["chosen_rank"], r["rejected_rank"], r["judge_hash"], r["strategy"]) == (1, 4, JUDGE, "round-robin")
    for col in ("prompt_id", "chosen_id", "rejected_id", "sampler_hash", "pair_strategy", "chosen_tokens"):
        assert r[col] is not None
    # recorded in run.json for provenance
    assert run.read_meta()["stages"]["export"][f"{JUDGE}-best-worst"]["summary"]["n_rows"] == 3


def test_ties_never_become_pairs(tmp_path):
    prompts = [
        ("all tied", [cand("one", 1, 1.0), cand("two", 1, 1.0), cand("three", 1, 1.0)]),
        ("some tied", [cand("top", 1, 3.0), cand("mid a", 2, 2.0), cand("mid b", 2, 2.0), cand("low", 3, 0.0)]),
    ]
    run = make_ranked_run(tmp_path / "run", prompts)
    s = export_run(run, ExportConfig(pairs="all", out=str(tmp_path / "all")))
    assert s.drops == {"tie": 3 + 1} and s.n_considered == 3 + 6
    df = pl.read_parquet(tmp_path / "all" / "data" / "*.parquet")
    assert df.height == 5
    assert all(c != r for c, r in zip(df["chosen_id"], df["rejected_id"], strict=True))
    assert (df["chosen_rank"] < df["rejected_rank"]).all()
    s = export_run(run, ExportConfig(out=str(tmp_path / "bw")))
    assert s.n_rows == 1 and s.drops == {"no_preference": 1}


def test_every_strategy_counts(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    n = {p: export_run(run, ExportConfig(pairs=p, out=str(tmp_path / p))).n_rows for p in
         ("best-worst", "best-vs-each", "all", "adjacent")}  # fmt: skip
    assert n == {"best-worst": 1, "best-vs-each": 3, "all": 6, "adjacent": 3}


def test_truncated_dropped_by_default_and_kept_on_request(tmp_path):
    cands = four()
    cands[-1] = cand("bad and cut", 4, 1.0, finish="length")
    run = make_ranked_run(tmp_path / "run", [("q", cands), ("q2", four("x "))])
    s = export_run(run, ExportConfig(out=str(tmp_path / "a")))
    assert s.n_rows == 1 and s.drops == {"truncated": 1}
    s = export_run(run, ExportConfig(out=str(tmp_path / "b"), keep_truncated=True))
    assert s.n_rows == 2 and s.drops == {}


def test_identical_texts_never_paired(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", [cand("same", 1, 2.0), cand("other", 2, 1.0), cand(" same ", 3, 0.0)])])
    s = export_run(run, ExportConfig(pairs="all", out=str(tmp_path / "a"), keep_truncated=True, keep_inconsistent=True))
    assert s.drops == {"identical_text": 1} and s.n_rows == 2


def test_min_margin_and_unknown_margin(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", four()), ("q2", [cand("a", 1), cand("b", 2)])])
    with pytest.raises(PrefdataError, match=r"\(margin_unknown 1, below_margin 3\); relax with a lower --min-margin"):
        export_run(run, ExportConfig(pairs="adjacent", min_margin=1.5, out=str(tmp_path / "a")))
    s = export_run(run, ExportConfig(pairs="adjacent", min_margin=1.0, out=str(tmp_path / "b")))
    assert s.n_rows == 3 and s.drops == {"margin_unknown": 1}


def test_min_margin_keeps_wide_pairs(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    s = export_run(run, ExportConfig(pairs="all", min_margin=2.0, out=str(tmp_path / "a")))
    assert s.n_rows == 3 and s.drops == {"below_margin": 3}


def test_inconsistent_direct_comparisons_dropped(tmp_path):
    # prompt 0: best (0) vs worst (3) judged twice, the two orders disagree; prompt 1: consistent
    judg = [(0, 0, 3, "a"), (0, 3, 0, "a"), (1, 0, 3, "a"), (1, 3, 0, "b"), (1, 0, 1, "fail")]
    run = make_ranked_run(tmp_path / "run", [("q", four()), ("q2", four("x "))], judgments=judg)
    s = export_run(run, ExportConfig(out=str(tmp_path / "a")))
    assert s.n_rows == 1 and s.drops == {"inconsistent": 1}
    s = export_run(run, ExportConfig(out=str(tmp_path / "b"), keep_inconsistent=True))
    assert s.n_rows == 2


def test_iterative_ranking_needs_best_worst(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", [cand("a", 1), cand("b", None), cand("c", 3)])])
    assert export_run(run, ExportConfig(out=str(tmp_path / "bw"))).n_rows == 1
    for kw in ({"pairs": "all"}, {"pairs": "adjacent"}, {"pairs": "best-vs-each"}, {"shape": "ranking"}):
        with pytest.raises(PrefdataError, match="round-robin or scores"):
            export_run(run, ExportConfig(out=str(tmp_path / "x"), **kw))


def test_string_shape(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    export_run(run, ExportConfig(shape="string", out=str(tmp_path / "s")))
    row = _load(tmp_path / "s")["train"][0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("q", "best answer with many words here", "bad")
    multi = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]
    run2 = make_ranked_run(tmp_path / "run2", [(multi, four())])
    with pytest.raises(PrefdataError, match="single-message prompts"):
        export_run(run2, ExportConfig(shape="string", out=str(tmp_path / "s2")))


def test_ranking_shape_lists_every_candidate(tmp_path):
    cands = four() + [cand("cut off", 5, 0.0, finish="length")]
    run = make_ranked_run(tmp_path / "run", [("q", cands), ("tied", [cand("u", 1), cand("v", 1)])])
    s = export_run(run, ExportConfig(shape="ranking", out=str(tmp_path / "r")))
    assert s.drops == {"truncated": 1, "too_few_candidates": 1}
    row = _load(tmp_path / "r")["train"][0]
    assert row["ranks"] == [1, 2, 3, 4] and row["scores"] == [4.0, 3.0, 2.0, 1.0]
    assert row["completions"][0] == "best answer with many words here" and len(row["candidate_ids"]) == 4


def test_kto_shape_labels_and_ambiguity(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    s = export_run(run, ExportConfig(shape="kto", out=str(tmp_path / "k")))
    rows = _load(tmp_path / "k")["train"].to_list()
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("best answer with many words here", True), ("bad", False)]  # fmt: skip
    s = export_run(run, ExportConfig(shape="kto", pairs="adjacent", out=str(tmp_path / "k2")))
    # middle candidates are chosen in one pair and rejected in the next
    assert s.drops == {"ambiguous_label": 2} and s.n_rows == 2


@pytest.mark.parametrize("fmt", ["jsonl", "datasets"])
def test_other_formats_round_trip(tmp_path, fmt):
    run = make_ranked_run(tmp_path / "run", [(f"q{i}", four(f"{i} ")) for i in range(6)])
    s = export_run(run, ExportConfig(format=fmt, test_size=0.34, out=str(tmp_path / fmt)))
    ds = _load(tmp_path / fmt)
    n_test = len(split_prompt_ids(run.read_prompts()["prompt_id"].to_list(), 0.34, 0))
    assert 0 < n_test < 6
    assert {k: len(v) for k, v in ds.items()} == s.splits == {"train": 6 - n_test, "test": n_test}
    assert ds["train"][0]["chosen"][0]["role"] == "assistant"
    if fmt == "datasets":
        disk = datasets.load_from_disk(str(tmp_path / fmt))
        assert disk["test"].to_list() == ds["test"].to_list()


def test_split_by_prompt_is_disjoint_and_seeded(tmp_path):
    run = make_ranked_run(tmp_path / "run", [(f"q{i}", four(f"{i} ")) for i in range(20)])
    s = export_run(run, ExportConfig(pairs="all", test_size=0.25, seed=3, out=str(tmp_path / "a")))
    ds = _load(tmp_path / "a")
    train, test = set(ds["train"]["prompt_id"]), set(ds["test"]["prompt_id"])
    expected = split_prompt_ids(run.read_prompts()["prompt_id"].to_list(), 0.25, 3)
    assert not train & test and test == expected and 0 < len(test) < 20
    assert s.splits == {"train": 6 * (20 - len(test)), "test": 6 * len(test)}  # `all` gives 6 pairs per prompt
    ids = [f"p{i}" for i in range(100)]
    assert split_prompt_ids(ids, 0.1, 3) == split_prompt_ids(list(reversed(ids)), 0.1, 3)
    assert split_prompt_ids(ids, 0.1, 3) != split_prompt_ids(ids, 0.1, 4)


def test_adding_prompts_never_moves_an_existing_one():
    """Issue 9.11: the split is a fixed hash threshold, so a prompt's side never depends on the others."""
    ids = [f"prompt-{i}" for i in range(2000)]
    full = split_prompt_ids(ids, 0.2, 7)
    for n in (1, 2, 5, 10, 37, 100, 500, 1999):
        assert split_prompt_ids(ids[:n], 0.2, 7) == full & set(ids[:n]), n
    big = split_prompt_ids([f"x{i}" for i in range(20_000)], 0.2, 0)
    assert abs(len(big) / 20_000 - 0.2) < 0.015  # the test share is test_size on average
    assert split_prompt_ids(ids, 0.1, 7) <= split_prompt_ids(ids, 0.2, 7)  # a larger test only adds prompts


def test_length_bias_warning(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    s = export_run(run, ExportConfig(out=str(tmp_path / "a")))
    assert any("longer than rejected in 100%" in w for w in s.warnings)
    short_best = [cand("ok", 1, 2.0), cand("a much longer but worse answer", 2, 1.0)]
    s = export_run(make_ranked_run(tmp_path / "run2", [("q", short_best)]), ExportConfig(out=str(tmp_path / "b")))
    assert s.warnings == []


def test_overwrite_rules(tmp_path):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    out = tmp_path / "out"
    export_run(run, ExportConfig(out=str(out)))
    with pytest.raises(PrefdataError, match="not empty; pass --overwrite"):
        export_run(run, ExportConfig(out=str(out)))
    export_run(run, ExportConfig(out=str(out), pairs="all", overwrite=True))
    assert pl.read_parquet(out / "data" / "*.parquet").height == 6
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(PrefdataError, match="not a prefdata export"):
        export_run(run, ExportConfig(out=str(other), overwrite=True))
    assert (other / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-export")]


def test_bad_runs(tmp_path):
    with pytest.raises(PrefdataError, match="not a prefdata run"):
        export_run(RunDir(tmp_path / "nothing"), ExportConfig())
    run = make_ranked_run(tmp_path / "run", [("q", four())], write_rankings=False)
    with pytest.raises(PrefdataError, match="no rankings yet; run `prefdata rank"):
        export_run(run, ExportConfig())
    run = make_ranked_run(tmp_path / "two", [("q", four())])
    make_ranked_run(tmp_path / "two", [("q", four())], judge="otherjudge")
    with pytest.raises(PrefdataError, match="several judges .*judgehash0000001, otherjudge.*--judge"):
        export_run(run, ExportConfig())
    assert export_run(run, ExportConfig(judge_hash="otherjudge", out=str(tmp_path / "o"))).judge_hash == "otherjudge"
    with pytest.raises(PrefdataError, match="no rankings for judge nope"):
        export_run(run, ExportConfig(judge_hash="nope"))


def test_empty_export_names_the_filters(tmp_path):
    cands = [cand("a", 1, 1.0, finish="length"), cand("b", 2, 0.0)]
    run = make_ranked_run(tmp_path / "run", [("q", cands), ("t", [cand("x", 1), cand("y", 1)])])
    with pytest.raises(PrefdataError, match=r"nothing to export.*no_preference 1, truncated 1.*--keep-truncated"):
        export_run(run, ExportConfig(out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_config_validation():
    for kw, msg in (({"pairs": "best"}, "unknown --pairs 'best'; choose one of best-worst"),
                    ({"format": "csv"}, "unknown --format"), ({"shape": "x"}, "unknown --shape"),
                    ({"test_size": 1.0}, "--test-size"), ({"min_margin": -1}, "--min-margin")):  # fmt: skip
        with pytest.raises(PrefdataError, match=msg):
            ExportConfig(**kw)


def test_overwrite_refuses_a_project_folder_that_mentions_prefdata(tmp_path, capsys):
    """Issue 10.1: a README that says "prefdata" is no licence to delete a folder; only a manifest that lists
    every file in the folder is."""
    from prefdata.cli import main

    run = make_ranked_run(tmp_path / "run", [("q", four())])
    proj = tmp_path / "myproject"
    (proj / "src").mkdir(parents=True)
    (proj / "README.md").write_text("# My project\nWe use prefdata.\n")
    (proj / "src" / "important.py").write_text("x\n")
    with pytest.raises(SystemExit) as e:
        main(["export", "--run", str(run.path), "--out", str(proj), "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "not a prefdata export" in err[0]
    assert (proj / "src" / "important.py").read_text() == "x\n"

    out = tmp_path / "out"
    export_run(run, ExportConfig(out=str(out)))
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                               if p.is_file() and p.name != MANIFEST)  # fmt: skip
    (out / "data" / "mine.txt").write_text("added by hand")  # an export with a file prefdata did not write
    with pytest.raises(PrefdataError, match=r"holds 1 file\(s\) prefdata did not write \(e.g. data/mine.txt\)"):
        export_run(run, ExportConfig(out=str(out), overwrite=True))
    assert (out / "data" / "mine.txt").exists()
    (out / "data" / "mine.txt").unlink()
    from prefdata.export.folder import OWNED_EXTRAS
    from prefdata.train.data import REF_CACHE_FOLDER

    assert REF_CACHE_FOLDER in OWNED_EXTRAS  # `prefdata train EXPORT` caches reference log-probs inside it
    (out / REF_CACHE_FOLDER).mkdir()
    (out / REF_CACHE_FOLDER / "ref-logps.parquet").write_bytes(b"cache")
    export_run(run, ExportConfig(out=str(out), pairs="all", overwrite=True, format="jsonl"))
    assert not list(out.glob("data/*.parquet")) and list(out.glob("data/*.jsonl"))
    assert not (out / REF_CACHE_FOLDER).exists()  # the old data's cache went with it


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_stale_temp_folders_of_killed_exports_are_cleaned(tmp_path):
    """Issue 10.1: a killed export leaves `.tmp-export-*` beside --out; the next export removes those of dead
    processes, keeps a live process's, and restores an old export killed between the two renames."""
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    exports = tmp_path / "exports"
    code = (
        "import os, signal, sys; from pathlib import Path; from prefdata.export.folder import temp_folder\n"
        "t = temp_folder(Path(sys.argv[1])); t.mkdir(parents=True); (t / 'half.parquet').write_bytes(b'x')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(exports / "a")], env=dict(os.environ), timeout=60)
    assert p.returncode == -signal.SIGKILL
    (killed,) = [d for d in exports.iterdir() if d.name.startswith(".tmp-export-")]
    live = exports / f".tmp-export-{os.getpid()}-0123abcd-b"
    live.mkdir()
    old = exports / f".old-export-{_dead_pid()}-89abcdef-c"  # killed after `c` was moved aside
    old.mkdir()
    (old / "README.md").write_text("previous export")
    export_run(run, ExportConfig(out=str(exports / "a")))
    assert not killed.exists() and live.is_dir()
    assert (exports / "c" / "README.md").read_text() == "previous export" and not old.exists()
    assert sorted(d.name for d in exports.iterdir()) == sorted(["a", "c", live.name])


def test_a_first_export_whose_prompts_all_fall_in_test_is_refused(tmp_path):
    """Issue 9.11: a tiny export whose every prompt hashed into test used to put them all in train, so prompts that a
    later, larger export keeps in test were trained on. It is now one clear error, and nothing is written."""
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    pid = run.read_prompts()["prompt_id"][0]
    seed = next(s for s in range(1000) if split_point(pid, s) < 0.5)  # this prompt falls in a 50% test split
    out = tmp_path / "out"
    with pytest.raises(PrefdataError, match="every exported prompt falls in the test split"):
        export_run(run, ExportConfig(out=str(out), test_size=0.5, seed=seed))
    assert not out.exists()
    train_seed = next(s for s in range(1000) if split_point(pid, s) >= 0.5)
    s = export_run(run, ExportConfig(out=str(out), test_size=0.5, seed=train_seed))
    assert s.splits == {"train": s.n_rows}  # in train by its hash: no test split, and that is said
    assert any("too few prompts for a test split" in w for w in s.warnings)
