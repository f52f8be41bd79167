"""The streaming export writes exactly what the export before it wrote (issue 13): every pair strategy and shape,
row by row and file by file, with the same drop counts, pairs considered, splits, lengths and sampler hashes, on
runs with ties, failed judge calls, truncated completions, cut reward-model inputs, inconsistent and stale
direct verdicts, identical texts, missing scores, duplicate candidate shards and prompts in several groups.
The old export is frozen in tests/legacy_export.py."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import prefdata.export.run as export_mod
from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, export_run
from prefdata.run.records import content_key
from prefdata.run.store import RunDir
from tests.helpers import JUDGE, RANKING_SCHEMA, cand, make_ranked_run
from tests.legacy_export import LegacyExport, legacy_export

STRATEGIES = ("best-worst", "best-vs-each", "all", "adjacent")
SHAPES = ("conversational", "string", "ranking", "kto")
POOL = ["same", " same ", "same\n", "other", "a longer answer with words", "short", "x", "another answer here",
        "yet another reply", "\u00a0same", "same\x1c"]  # fmt: skip


def _prompt(i: int, rng: random.Random) -> str | list[dict[str, str]]:
    if i % 7 == 3:
        return [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"multi {i}"}]
    return f"question {i}?"


def _cands(i: int, rng: random.Random, complete: bool) -> list[dict[str, Any]]:
    n = rng.randint(2, 6)
    out = []
    for k in range(n):
        text = rng.choice(POOL) if rng.random() < 0.3 else f"answer {i}.{k} " + "word " * rng.randint(0, 12)
        rank: int | None = rng.randint(1, n)  # ties happen
        if not complete and rng.random() < 0.3:
            rank = None
        score = None if i % 5 == 1 else round(rng.uniform(-2, 3), 1)
        finish = "length" if rng.random() < 0.12 else "stop"
        tokens = None if (i % 11 == 4 and k == 0) else len(text.split())
        out.append(cand(text, rank, score, finish=finish, n_tokens=tokens))
    if rng.random() < 0.8:  # mostly listed best first, as rank writes them; sometimes not
        out.sort(key=lambda c: 1 << 30 if c["rank"] is None else c["rank"])
    return out


def build_run(path: Path, n_prompts: int = 30, seed: int = 0, complete: bool = True, single_turn: bool = False) -> RunDir:
    rng = random.Random(seed)
    prompts = [(f"question {i}?" if single_turn else _prompt(i, rng), _cands(i, rng, complete)) for i in range(n_prompts)]
    judg = []
    for pi, (_, cs) in enumerate(prompts):
        for _ in range(rng.randint(0, 4)):
            a, b = rng.sample(range(len(cs)), 2)
            judg.append((pi, a, b, rng.choice(["a", "b", "a", "b", "tie", "fail"])))
    run = make_ranked_run(path, prompts, judgments=judg, strategy="round-robin")
    # the rankings: some rest on failed calls, some have no best/worst or no scores, and their order is not the prompts'
    rk = run.read_rankings(JUDGE)
    assert rk is not None
    rows = rk.to_dicts()
    for i, r in enumerate(rows):
        if i % 9 == 2:
            r["failures"] = 1
        if i % 13 == 5:
            r["best_id"] = r["worst_id"] = None
        if i % 10 == 6:
            r["scores"] = None
        if i % 8 == 7:
            r["failures"] = None
    rng.shuffle(rows)
    for p in run.rankings_dir(JUDGE).glob("*.parquet"):
        p.unlink()
    run.write_shard(run.rankings_dir(JUDGE), pl.DataFrame(rows, schema=RANKING_SCHEMA))
    # judgments with content keys (current and stale) and reward-model inputs cut to the max length
    prompts_df = run.read_prompts().to_dicts()
    by_pid = {p["prompt_id"]: p for p in prompts_df}
    cands_df = run.read_candidates(unique=True)
    assert cands_df is not None
    texts = dict(zip(cands_df["candidate_id"], cands_df["text"], strict=True))
    extra = []
    for r in rows[::3]:
        ids = r["candidate_ids"]
        if len(ids) < 2:
            continue
        a, b = ids[0], ids[-1]
        p = by_pid[r["prompt_id"]]
        key = content_key(JUDGE, p["messages"], p["reference"], texts[a], texts[b])
        stale = rng.random() < 0.5
        extra.append({"prompt_id": r["prompt_id"], "a_id": a, "b_id": b, "verdict": "b", "winner_id": b,
                      "content_key": "0" * 32 if stale else key, "truncated": None})  # fmt: skip
        extra.append({"prompt_id": r["prompt_id"], "a_id": ids[1], "b_id": None, "verdict": None, "winner_id": None,
                      "content_key": None, "truncated": rng.random() < 0.5})  # fmt: skip
    run.write_shard(run.judgments_dir(JUDGE), pl.DataFrame(extra, schema_overrides={"truncated": pl.Boolean}))
    # a second candidates shard repeating some candidates (same texts): one row per id is kept
    run.write_shard(run.candidates_dir, cands_df.head(10))
    # prompts nobody ranked
    return run


def _read_split(folder: Path, split: str, fmt: str) -> tuple[pl.DataFrame | None, list[int]]:
    if fmt == "datasets":
        import datasets

        d = Path(folder) / split
        if not d.exists():
            return None, []
        ds = datasets.load_from_disk(str(d))
        return pl.from_arrow(ds.data.table), [len(ds)]  # type: ignore[return-value]
    ext = "parquet" if fmt == "parquet" else "jsonl"
    files = sorted((folder / "data").glob(f"{split}-*.{ext}"))
    if not files:
        return None, []
    frames = [pl.read_parquet(f) if fmt == "parquet" else pl.read_ndjson(f) for f in files]
    n = len(files)
    assert [f.name for f in files] == [f"{split}-{i:05d}-of-{n:05d}.{ext}" for i in range(n)]
    return pl.concat(frames, how="vertical_relaxed"), [f.height for f in frames]


def _compare(run: RunDir, cfg: ExportConfig, tmp: Path) -> str | None:
    try:
        old: LegacyExport | None = legacy_export(run, cfg)
        old_err = None
    except PrefdataError as e:
        old, old_err = None, str(e)
    try:
        new = export_run(run, cfg)
        new_err = None
    except PrefdataError as e:
        new, new_err = None, str(e)
    assert new_err == old_err
    if old is None or new is None:
        assert cfg.out is not None and not Path(cfg.out).exists()
        return new_err
    assert list(new.drops.items()) == list(old.drops.items())  # the card lists them in this order
    assert new.n_considered == old.n_considered
    assert new.n_rows == old.n_rows
    assert new.splits == {k: v.height for k, v in old.splits.items()}
    assert new.sampler_hashes == old.sampler_hashes
    assert new.lengths == old.lengths
    out = Path(new.out)
    for split, want in old.splits.items():
        got, sizes = _read_split(out, split, cfg.format)
        assert got is not None, split
        if cfg.format == "jsonl":
            want = pl.read_ndjson(want.write_ndjson().encode())
        else:
            assert got.schema == want.schema
        assert got.columns == want.columns
        assert got.to_dicts() == want.to_dicts()
        if cfg.format != "datasets":
            m = cfg.max_rows_per_file
            assert sizes == [min(m, want.height - i) for i in range(0, want.height, m)] or (want.height == 0 and sizes == [0])
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunDir]:
    base = tmp_path_factory.mktemp("eq")
    return {
        "mixed": build_run(base / "mixed"),
        "single": build_run(base / "single", n_prompts=40, seed=1, single_turn=True),
        "iterative": build_run(base / "iter", n_prompts=25, seed=2, complete=False),
    }


OPTIONS: list[dict[str, Any]] = [
    {},
    {"keep_truncated": True, "keep_inconsistent": True},
    {"min_margin": 1.0, "test_size": 0.3, "seed": 5, "max_rows_per_file": 4},
    {"min_margin": 0.5, "keep_truncated": True, "test_size": 0.5, "max_rows_per_file": 3},
]


@pytest.mark.parametrize("group", [1_000_000, 4])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pairs", STRATEGIES)
def test_same_rows_as_before(runs, tmp_path, monkeypatch, pairs, shape, group):
    monkeypatch.setattr(export_mod, "GROUP_PROMPTS", group, raising=False)
    for name in ("mixed", "single", "iterative"):
        for i, opts in enumerate(OPTIONS):
            cfg = ExportConfig(pairs=pairs, shape=shape, out=str(tmp_path / f"{name}-{i}"), plot=False, **opts)
            _compare(runs[name], cfg, tmp_path)


@pytest.mark.parametrize("fmt", ["jsonl", "datasets"])
def test_same_rows_other_formats(runs, tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(export_mod, "GROUP_PROMPTS", 3, raising=False)
    for pairs in ("all", "best-worst"):
        cfg = ExportConfig(pairs=pairs, format=fmt, test_size=0.4, max_rows_per_file=5, out=str(tmp_path / pairs),
                           plot=False, keep_truncated=True)  # fmt: skip
        _compare(runs["single"], cfg, tmp_path)


def test_every_prompt_in_test_is_refused(tmp_path, monkeypatch):
    """The one intended difference from the old export (issue 9.11): a tiny export whose every prompt hashes into
    test was written as train only, which leaked test prompts into training; it is now an error."""
    monkeypatch.setattr(export_mod, "GROUP_PROMPTS", 1, raising=False)
    run = build_run(tmp_path / "run", n_prompts=3, seed=4, single_turn=True)
    cfg = ExportConfig(pairs="all", test_size=0.99, keep_truncated=True, keep_inconsistent=True, out=str(tmp_path / "o"),
                       plot=False, max_rows_per_file=2)  # fmt: skip
    with pytest.raises(PrefdataError, match="every exported prompt falls in the test split"):
        export_run(run, cfg)
    assert not (tmp_path / "o").exists()


def test_identical_text_strips_what_python_strips():
    import sys

    from prefdata.export.tables import SPACE

    assert SPACE == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())


def test_same_errors_for_broken_runs(tmp_path):
    """A ranked prompt missing from prompts.parquet, ranked candidates missing from candidates/, and one candidate
    id with two texts: the same one-line errors as before."""
    run = build_run(tmp_path / "run", n_prompts=6, seed=3, single_turn=True)
    rk = run.read_rankings(JUDGE)
    assert rk is not None
    cfg = ExportConfig(pairs="all", out=str(tmp_path / "o"), plot=False)
    fake = rk.head(1).with_columns(pl.lit("nosuchprompt0000").alias("prompt_id"))
    _replace_rankings(run, pl.concat([rk, fake]))
    assert "1 ranked prompt(s) are not in prompts.parquet (e.g. nosuchprompt0000)" in str(_compare(run, cfg, tmp_path))
    ids = pl.lit(["zz-missing", "aa-missing", "mm-missing"], dtype=pl.List(pl.String))
    broken = rk.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(ids).otherwise(pl.col("candidate_ids"))
                             .alias("candidate_ids"))  # fmt: skip
    _replace_rankings(run, broken)
    assert "3 ranked candidate id(s) are not in candidates/ (e.g. aa-missing)" in str(_compare(run, cfg, tmp_path))
    _replace_rankings(run, rk)
    cands = run.read_candidates(unique=True)
    assert cands is not None
    run.write_shard(run.candidates_dir, cands.slice(3, 2).with_columns(pl.lit("another text").alias("text")))
    assert "has different texts in" in str(_compare(run, cfg, tmp_path))


def _replace_rankings(run: RunDir, df: pl.DataFrame) -> None:
    for p in run.rankings_dir(JUDGE).glob("*.parquet"):
        p.unlink()
    run.write_shard(run.rankings_dir(JUDGE), df)
