"""Export a ranked run as a preference dataset folder: data files + a dataset card, exactly what goes to the Hub.

`export_run(run, cfg)` is the one entry point (the CLI and `iterate` call it). It joins rankings, candidates
and prompts by id (never by text or row position, and every join is checked), forms pairs by the rules of
`prefdata.pairs` (as polars tables, `prefdata.export_tables`), counts every dropped pair by reason, splits
train/test by prompt_id, and writes the folder atomically (a temp folder, then rename), so a failed export
never leaves half a dataset behind. It streams: GROUP_PROMPTS ranked prompts at a time are read lazily, paired
and appended to the data files, so its memory follows the group size, not the run's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from prefdata.card import build_card, plot_lengths
from prefdata.console import progress, terminal
from prefdata.errors import PrefdataError
from prefdata.export_folder import check_out, clean_stale, export_lock, swap_into_place, temp_folder, write_manifest
from prefdata.export_tables import CAND_FIELDS, GroupInput, build_group, merge_events
from prefdata.options import opt
from prefdata.pairs import DROP_REASONS, NEEDS_FULL_ORDER, PAIR_STRATEGIES
from prefdata.records import MESSAGES
from prefdata.sampler_choice import ALL, choose_sampler, describe
from prefdata.store import RunDir, check_writable, command_line

SHAPES = ("conversational", "string", "ranking", "kto")
FORMATS = ("parquet", "jsonl", "datasets")
# Ranked prompts read, joined and paired at a time: export's peak memory follows this, not the run's size.
GROUP_PROMPTS = 10_000
# Output rows given their texts at a time (a group's `all` pairs can be many more than its candidates).
CHUNK_ROWS = 20_000


@dataclass
class ExportConfig:
    """How to turn one judge's rankings into a dataset. Defaults give the safest pairs: best vs worst,
    no ties, no inconsistent pairs, no truncated completions."""

    judge_hash: str | None = opt(None, "Which rankings/<judge_hash>/ to export; none picks the only one (an error lists "
                                 "them if several).", flag=("--judge", "--judge-hash"))
    sampler: str | None = opt(None, "Export the rankings of this sampler (its hash; a unique prefix will do) where the run "
                              "holds several. `all`: also rankings that pool several samplers (pairs may mix them).")
    pairs: str = opt("best-worst", "best-worst (one pair per prompt) | best-vs-each | all (every ordered pair) | adjacent "
                     "(neighbours in the ranking); all but best-worst need a complete ranking (round-robin or scores).")
    shape: str = opt("conversational", "conversational (prompt/chosen/rejected as message lists) | string (plain strings; "
                     "single-turn prompts only) | ranking (one row per prompt with every candidate, rank and score) | kto "
                     "(unpaired prompt/completion/label rows taken from the kept pairs).")
    format: str = opt("parquet", "parquet (data/*.parquet) | jsonl (data/*.jsonl) | datasets (a `save_to_disk` folder).")
    out: str | None = opt(None, "Output folder; none: <run>/exports/<name>.")
    name: str | None = opt(None, "Export name under <run>/exports/; none: derived from the judge and strategy.")
    min_margin: float = opt(0.0, "Minimum score difference chosen - rejected; 0 disables it (pairs without scores are "
                            "then kept).")
    keep_truncated: bool = opt(False, "Keep completions that hit the token limit (finish_reason=length), and pairs whose "
                               "reward-model score came from an input cut to --rm-max-length.",
                               flag="--keep-truncated/--drop-truncated")
    keep_inconsistent: bool = opt(False, "Keep pairs whose direct comparisons did not all prefer the chosen candidate.",
                                  flag="--keep-inconsistent/--drop-inconsistent")
    test_size: float = opt(0.0, "Fraction of prompts (not rows) in a test split; 0 writes train only.")
    seed: int = opt(0, "Seed of the test split.")
    license: str = opt("other", "Dataset card licence; `other` because the right licence depends on the prompts and the "
                       "model: set it.")
    tags: list[str] = opt([], "Extra dataset card tag (repeatable).", flag=("--tag", "--tags"))
    pretty_name: str | None = opt(None, "Dataset card title.")
    length_bias_threshold: float = opt(0.6, "Warn when chosen is longer than rejected in more than this share of pairs.")
    max_rows_per_file: int = opt(200_000, "Rows per data file (keeps Hub files well under their size limits).")
    overwrite: bool = opt(False, "Replace an existing export folder (only one that prefdata wrote).")
    plot: bool = opt(True, "Write the chosen/rejected length plot (PNG) next to the card.")

    def __post_init__(self) -> None:
        _choice("--pairs", self.pairs, PAIR_STRATEGIES)
        _choice("--shape", self.shape, SHAPES)
        _choice("--format", self.format, FORMATS)
        if not 0.0 <= self.test_size < 1.0:
            raise PrefdataError(f"--test-size must be a fraction in [0, 1), got {self.test_size}")
        if self.min_margin < 0:
            raise PrefdataError(f"--min-margin must be >= 0, got {self.min_margin}")
        if self.max_rows_per_file < 1:
            raise PrefdataError(f"max_rows_per_file must be >= 1, got {self.max_rows_per_file}")


@dataclass
class ExportSummary:
    """What an export wrote and what it dropped (also recorded in run.json and the card)."""

    out: str
    judge_hash: str
    pairs: str
    shape: str
    format: str
    n_prompts: int
    n_ranked: int
    n_considered: int
    n_rows: int
    splits: dict[str, int]
    drops: dict[str, int]
    warnings: list[str]
    lengths: dict[str, Any]
    judge_stats: dict[str, Any]
    files: list[str]
    sampler_hashes: list[str] = field(default_factory=list)  # the samplers whose completions are in the rows

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        split = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        out = [
            f"exported {self.n_rows} rows ({split}) from {self.n_ranked}/{self.n_prompts} ranked prompts "
            f"[judge {self.judge_hash}, --pairs {self.pairs}, --shape {self.shape}, --format {self.format}]",
            f"  pairs considered: {self.n_considered}; dropped: {_drops_text(self.drops) or 'none'}",
            f"  written to {self.out}",
        ]
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def export_run(run: RunDir, cfg: ExportConfig) -> ExportSummary:
    """Write one judge's rankings of `run` as a dataset folder with its card; return what was written.

    Works in groups of GROUP_PROMPTS ranked prompts (in prompts.parquet order): each group's prompts, candidates
    and judge calls are read lazily (`scan_parquet`, filtered to the group), its pair table is built with polars
    (prefdata.export_tables) and its rows are appended to the data files, so memory follows the group, not the
    run. The rows, files, counts and card are the ones the one-frame export wrote (tests/legacy_export.py)."""
    run.require()
    meta = run.read_meta()
    judge_hash = pick_judge(run, cfg.judge_hash, cfg.sampler)
    rankings = run.read_rankings(judge_hash)
    if rankings is None or rankings.height == 0:
        raise PrefdataError(f"{run.rankings_dir(judge_hash)} has no finished shards; let `prefdata rank` finish first")
    if not run.prompts_file.is_file():
        run.read_prompts()  # raises the one-line error
    prompts = pl.scan_parquet(run.prompts_file)
    cand_scan, ids_df, repeated = _checked_candidates(run)
    # Characters are the lengths' measure only when some candidate has no token count.
    chars = bool(cand_scan.select(pl.col("n_tokens").is_null().any()).collect().item())

    _check_full_order(_final(rankings), cfg.pairs, cfg.shape, judge_hash)
    ordered = _in_prompt_order(_normalized(rankings), prompts)
    _check_ranked_candidates(ordered, ids_df["candidate_id"])
    _check_samplers(run, meta, ordered, ids_df, judge_hash, cfg.sampler)
    cut_all = _cut_inputs(run, judge_hash)
    cut = cut_all.head(0) if cfg.keep_truncated else cut_all
    judgments = None if cfg.keep_inconsistent else _pairwise_judgments(run, judge_hash)

    name = cfg.name or (f"{judge_hash}-{cfg.pairs}" + ("" if cfg.shape == "conversational" else f"-{cfg.shape}"))
    out = Path(cfg.out) if cfg.out else run.exports_dir(name)
    setup_error: PrefdataError | None = None  # raised after the export's own errors, as when it wrote at the end
    try:
        check_writable(run.path, "--run")  # run.json records the export
        check_writable(out.parent, "--out")
    except PrefdataError as e:
        setup_error = e
    made_parent = not out.parent.exists()
    tmp = temp_folder(out)
    writer: _DataWriter | None = None
    out_lock = contextlib.ExitStack()
    try:
        if setup_error is None:
            # before check_out, held to the swap: a second export to this --out stops here at once
            out_lock.enter_context(export_lock(out))
            try:
                clean_stale(out.parent)
                check_out(out, cfg.overwrite)
            except PrefdataError as e:
                setup_error = e
        writer = _DataWriter(None if setup_error else tmp, cfg)
        events: dict[str, tuple[int, tuple[int, int]]] = {}
        n_considered = n_rows = n_multi = 0
        samplers: set[str] = set()
        lengths_parts: list[pl.DataFrame] = []
        ends_only = cfg.pairs == "best-worst" and cfg.shape != "ranking"  # two texts per prompt are read
        with progress(None, "export", "row") if terminal().isatty() else _NoBar() as bar:
            for start in range(0, ordered.height, GROUP_PROMPTS):
                group = _read_group(ordered.slice(start, GROUP_PROMPTS), prompts, cand_scan, judgments, cut, ends_only,
                                    repeated)  # fmt: skip
                test_ids = split_prompt_ids(group.rankings["prompt_id"].to_list(), cfg.test_size, cfg.seed)
                tables = build_group(group, pairs=cfg.pairs, shape=cfg.shape, min_margin=cfg.min_margin,
                                     keep_truncated=cfg.keep_truncated, keep_inconsistent=cfg.keep_inconsistent,
                                     test_ids=test_ids, judge_hash=judge_hash, chunk_rows=CHUNK_ROWS, chars=chars)  # fmt: skip
                for chunk in tables.chunks:
                    writer.write(chunk)
                    bar.update(chunk.height)
                merge_events(events, tables.events)
                n_considered += tables.n_considered
                n_rows += tables.n_rows
                n_multi += tables.n_multi_turn
                samplers |= tables.samplers
                lengths_parts.append(tables.lengths)
                del group, tables
        drops = Counter({k: n for k, (n, _) in sorted(events.items(), key=lambda kv: kv[1][1]) if n})
        if not n_rows:
            raise PrefdataError(
                f"nothing to export: every pair was filtered out ({_drops_text(drops) or 'no pairs'}); " + _relax_hint(drops)
            )
        if cfg.shape == "string" and n_multi:
            raise PrefdataError(
                f"--shape string needs single-message prompts, but {n_multi} exported rows have a system message or "
                "several turns; use --shape conversational"
            )
        if setup_error is not None:
            raise setup_error
        splits, files = writer.finish()
        lengths = _length_summary(pl.concat(lengths_parts, how="vertical_relaxed"))
        del lengths_parts
        warnings = []
        share = lengths.get("chosen_longer_share")
        if share is not None and share > cfg.length_bias_threshold:
            warnings.append(
                f"chosen is longer than rejected in {share:.0%} of pairs ({lengths['measure']}): the judge may "
                "favour length; consider a length-controlled judge, --min-margin or length-normalised training"
            )
        if drops.get("judge_failed"):
            warnings.append(
                f"{drops['judge_failed']} prompts skipped: their rankings rest on failed judge calls; run the same "
                "`prefdata rank` command again to retry those calls, then export again"
            )
        if cfg.test_size > 0 and "test" not in splits:
            warnings.append("too few prompts for a test split (each prompt's side is fixed by its hash); everything is in train")

        judge_stats = ranking_stats(rankings)
        judge_stats["truncated_inputs"] = cut_all.height
        summary = ExportSummary(
            out=str(out),
            judge_hash=judge_hash,
            pairs=cfg.pairs,
            shape=cfg.shape,
            format=cfg.format,
            n_prompts=prompts.select(pl.len()).collect().item(),
            n_ranked=rankings.height,
            n_considered=n_considered,
            n_rows=n_rows,
            splits=splits,
            drops=dict(drops),
            warnings=warnings,
            lengths=lengths,
            judge_stats=judge_stats,
            files=[],
            sampler_hashes=sorted(samplers),
        )
        plot_name = None
        if cfg.plot and lengths["n_pairs"]:
            plot_name = "lengths.png"
            plot_lengths(tmp / plot_name, lengths["chosen_values"], lengths["rejected_values"], lengths["measure"])
            files.append(plot_name)
        card = build_card(
            summary=summary,
            cfg=cfg,
            meta=meta,
            data_files=_data_file_patterns(cfg.format, list(splits)),
            command=command_line(),
            plot_name=plot_name,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files.append("README.md")
        summary.files = sorted(files)
        write_manifest(tmp, files)
        swap_into_place(tmp, out)
    finally:
        if writer is not None:
            writer.bg.close()  # no write still running into the folder removed below
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        out_lock.close()
        if made_parent and out.parent.is_dir() and not any(out.parent.iterdir()):
            out.parent.rmdir()

    light = {k: v for k, v in lengths.items() if not k.endswith("_values")}
    record = dataclasses.asdict(dataclasses.replace(summary, lengths=light))  # no deep copy of every length
    run.record_stage("export", name, {"config": dataclasses.asdict(cfg), "summary": record})
    return summary


class _NoBar:
    """The progress bar off a terminal: nothing drawn, and tqdm not imported."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


# -- inputs -----------------------------------------------------------------------------------------


def pick_judge(run: RunDir, judge_hash: str | None, sampler: str | None = None) -> str:
    """The rankings folder to export: the one asked for, the only one there is, or the only one of --sampler (as
    rank recorded it in run.json) where the run holds rankings of several samplers."""
    found = run.judge_hashes()
    if judge_hash is None and len(found) > 1 and sampler not in (None, ALL):
        ranked = run.read_meta().get("stages", {}).get("rank", {})
        alone = {h: (ranked.get(h) or {}).get("samplers") or [] for h in found}  # rankings of one sampler alone
        mine = [h for h in found if len(alone[h]) == 1 and alone[h][0].startswith(sampler)]
        found = mine if len(mine) == 1 else found
    if judge_hash is not None:
        if judge_hash not in found:
            have = ", ".join(found) if found else "none"
            raise PrefdataError(f"{run.path} has no rankings for judge {judge_hash} (rankings present: {have})")
        return judge_hash
    if not found:
        raise PrefdataError(f"{run.path} has no rankings yet; run `prefdata rank --run {run.path}` first")
    if len(found) > 1:
        raise PrefdataError(f"{run.path} has rankings from several judges ({', '.join(found)}); pick one with --judge "
                            "(or, where they rank different samplers, with --sampler HASH)")
    return found[0]


def _final(rankings: pl.DataFrame) -> pl.DataFrame:
    """Rankings that rest on no failed judge call (the others are skipped and counted as judge_failed)."""
    if "failures" not in rankings.columns:
        return rankings
    return rankings.filter(pl.col("failures").fill_null(0) == 0)


def _check_full_order(rankings: pl.DataFrame, pairs: str, shape: str, judge_hash: str) -> None:
    needs = pairs in NEEDS_FULL_ORDER or shape == "ranking"
    if not needs or "complete" not in rankings.columns:
        return
    partial = rankings.filter(~pl.col("complete").fill_null(False))
    if partial.height:
        what = "--shape ranking" if shape == "ranking" else f"--pairs {pairs}"
        strategies = sorted(set(partial["strategy"].drop_nulls().to_list())) if "strategy" in partial.columns else []
        via = f" ({'/'.join(strategies)})" if strategies else ""
        raise PrefdataError(
            f"{what} needs a full order but {partial.height} rankings of judge {judge_hash}{via} are incomplete; "
            "rank with --strategy round-robin or scores, or export with --pairs best-worst"
        )


def truncated_inputs(run: RunDir, judge_hash: str) -> set[tuple[str, str]]:
    """(prompt_id, candidate_id) of every completion a reward model scored from an input cut to its max length
    (pointwise judgments flagged `truncated`): the score did not see the whole prompt, so pairs resting on it
    are dropped unless --keep-truncated."""
    df = run.read_judgments(judge_hash, columns=["prompt_id", "a_id", "truncated"])
    if df is None:
        return set()
    df = df.filter(pl.col("truncated").cast(pl.Boolean).fill_null(False))
    return set(zip(df["prompt_id"].to_list(), df["a_id"].to_list(), strict=True))


# -- rows -------------------------------------------------------------------------------------------


def _schema(shape: str) -> dict[str, pl.DataType]:
    if shape == "ranking":
        return {
            "prompt_id": pl.String(),
            "prompt": MESSAGES,
            "completions": pl.List(pl.String),
            "candidate_ids": pl.List(pl.String),
            "ranks": pl.List(pl.Int64),
            "scores": pl.List(pl.Float64),
            "finish_reasons": pl.List(pl.String),
            "n_tokens": pl.List(pl.Int64),
            "kinds": pl.List(pl.String),
            "sampler_hashes": pl.List(pl.String),
            "judge_hash": pl.String(),
            "strategy": pl.String(),
            "complete": pl.Boolean(),
        }
    if shape == "kto":
        return {
            "prompt_id": pl.String(),
            "prompt": MESSAGES,
            "completion": MESSAGES,
            "label": pl.Boolean(),
            "completion_id": pl.String(),
            "score": pl.Float64(),
            "rank": pl.Int64(),
            "judge_hash": pl.String(),
            "strategy": pl.String(),
            "sampler_hash": pl.String(),
            "model": pl.String(),
            "kind": pl.String(),
            "n_tokens": pl.Int64(),
            "finish_reason": pl.String(),
        }
    text: pl.DataType = pl.String() if shape == "string" else MESSAGES
    schema: dict[str, pl.DataType] = {
        "prompt_id": pl.String(),
        "prompt": text,
        "chosen": text,
        "rejected": text,
        "chosen_id": pl.String(),
        "rejected_id": pl.String(),
        "chosen_score": pl.Float64(),
        "rejected_score": pl.Float64(),
        "margin": pl.Float64(),
        "chosen_rank": pl.Int64(),
        "rejected_rank": pl.Int64(),
        "judge_hash": pl.String(),
        "strategy": pl.String(),
        "pair_strategy": pl.String(),
        "sampler_hash": pl.String(),
        "rejected_sampler_hash": pl.String(),
        "chosen_model": pl.String(),
        "rejected_model": pl.String(),
        "chosen_kind": pl.String(),
        "rejected_kind": pl.String(),
        "chosen_tokens": pl.Int64(),
        "rejected_tokens": pl.Int64(),
        "chosen_finish_reason": pl.String(),
        "rejected_finish_reason": pl.String(),
        "_n_turns": pl.Int64(),
    }
    return schema


# -- split and write --------------------------------------------------------------------------------


def split_prompt_ids(prompt_ids: list[str], test_size: float, seed: int) -> set[str]:
    """The prompt ids of the test split: a prompt is in test when its seeded hash, read as a number in [0, 1),
    is below `test_size`. The rule looks at one prompt at a time, so a prompt's split never depends on the
    other prompts: adding prompts later moves none of the existing ones across, and test prompts never leak
    into training through a re-export. The test share is `test_size` on average, not exactly."""
    if test_size <= 0:
        return set()
    return {p for p in set(prompt_ids) if split_point(p, seed) < test_size}


def split_point(prompt_id: str, seed: int) -> float:
    """The prompt's fixed place in [0, 1) for the split (the first 64 bits of a seeded SHA-256)."""
    return int(hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()[:16], 16) / 2**64


def _data_file_patterns(fmt: str, splits: list[str]) -> dict[str, str]:
    if fmt == "datasets":
        return {s: f"{s}/data-*.arrow" for s in splits}
    ext = "parquet" if fmt == "parquet" else "jsonl"
    return {s: f"data/{s}-*.{ext}" for s in splits}


class _Background:
    """One worker thread that writes the data files in submission order while the next rows are built: pyarrow's
    writer releases the GIL, so a second core compresses (wall time of a best-vs-each export at 1M candidates:
    bench/RESULTS.md 6.1). At most `depth` chunks wait, so memory stays bounded; a write's error is raised here."""

    def __init__(self, depth: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefdata-export-write")
        self._pending: deque[Any] = deque()
        self.depth = depth

    def run(self, fn: Any, *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self.depth:
            self._pending.popleft().result()

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for what is queued (errors of a failed export are not raised again) and stop the thread."""
        self._pool.shutdown(wait=True)
        self._pending.clear()


class _SplitFiles:
    """One split's data files, appended to a chunk at a time: `max_rows_per_file` rows each, as when the whole
    split was sliced at once; named `<split>-<i>-of-<n>` once n is known."""

    def __init__(self, folder: Path, split: str, fmt: str, max_rows: int, bg: _Background) -> None:
        self.folder, self.split, self.fmt, self.max_rows, self.bg = folder, split, fmt, max_rows, bg
        self.parts: list[Path] = []
        self.rows = 0
        self._in_file = 0
        self._out: Any = None

    def write(self, df: pl.DataFrame) -> None:
        while df.height:
            if self._out is None:
                self._open()
            take = df.height if self.fmt == "datasets" else min(self.max_rows - self._in_file, df.height)
            part = df.slice(0, take)
            if self.fmt == "parquet":
                table = part.to_arrow()
                if self._out.schema is not None and table.schema != self._out.schema:
                    table = table.cast(self._out.schema)
                self._out.write_table(table)
            elif self.fmt == "jsonl":
                part.write_ndjson(self._out.fh)
            else:
                self._out.write_table(part.to_arrow())
            self._in_file += take
            self.rows += take
            df = df.slice(take)
            if self.fmt != "datasets" and self._in_file == self.max_rows:
                self._close()

    def _open(self) -> None:
        path = self.folder / f".{self.split}-{len(self.parts):05d}.part"
        self.parts.append(path)
        self._in_file = 0
        self._out = _Opened(path, self.fmt, self.bg)

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def finish(self, name: str) -> list[str]:
        """Close the last file and give the files their final names (`name`: the split they end up in)."""
        self._close()
        self.bg.drain()
        if self.fmt == "datasets":
            return []
        ext = "parquet" if self.fmt == "parquet" else "jsonl"
        n = len(self.parts)
        rels = [f"data/{name}-{i:05d}-of-{n:05d}.{ext}" for i in range(n)]
        for part, rel in zip(self.parts, rels, strict=True):
            part.rename(self.folder.parent / rel)
        return rels


class _Opened:
    """An open data file: a parquet writer (zstd level 3, like polars' default), a jsonl file, or an Arrow IPC file (the
    datasets format's staging)."""

    def __init__(self, path: Path, fmt: str, bg: _Background) -> None:
        self.path, self.fmt, self.bg = path, fmt, bg
        self.schema: Any = None
        self._w: Any = None
        self.fh: Any = open(path, "wb") if fmt == "jsonl" else None  # noqa: SIM115 - closed in close()

    def write_table(self, table: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._w is None:
            self.schema = table.schema
            if self.fmt == "parquet":
                self._w = pq.ParquetWriter(self.path, table.schema, compression="zstd", compression_level=3)
            else:
                self._w = pa.ipc.new_file(str(self.path), table.schema)
        self.bg.run(self._w.write_table, table)

    def close(self) -> None:
        if self._w is not None:
            self.bg.run(self._w.close)  # after this file's queued writes
        if self.fh is not None:
            self.fh.close()


class _DataWriter:
    """The data files of an export, written a chunk of rows at a time into its temp folder (or nowhere, when
    the folder cannot be written: the export then only counts, to raise its own errors first)."""

    def __init__(self, folder: Path | None, cfg: ExportConfig) -> None:
        self.folder, self.cfg = folder, cfg
        self.schema = {k: v for k, v in _schema(cfg.shape).items() if k != "_n_turns"}
        self.splits: dict[str, _SplitFiles] = {}
        self.bg = _Background()
        if folder is not None:
            folder.mkdir(parents=True)
            (folder / ("data" if cfg.format != "datasets" else ".staging")).mkdir()

    def write(self, chunk: pl.DataFrame) -> None:
        if self.folder is None or not chunk.height:
            return
        test = chunk["_test"]
        rows = chunk.select([pl.col(k).cast(v) for k, v in self.schema.items()])
        for split, mask in (("train", ~test), ("test", test)):
            part = rows.filter(mask)
            if part.height:
                if split not in self.splits:
                    sub = "data" if self.cfg.format != "datasets" else ".staging"
                    self.splits[split] = _SplitFiles(self.folder / sub, split, self.cfg.format, self.cfg.max_rows_per_file,
                                                     self.bg)
                self.splits[split].write(part)

    def finish(self) -> tuple[dict[str, int], list[str]]:
        """Close the files. Every prompt in test is an error: moving them to train would put prompts that a later,
        larger export keeps in test into this training set (a prompt's side is fixed by its hash)."""
        assert self.folder is not None
        if "train" not in self.splits:
            raise PrefdataError(
                f"every exported prompt falls in the test split (--test-size {self.cfg.test_size}, --seed "
                f"{self.cfg.seed}), so there is no train split; lower --test-size or export more prompts"
            )
        order = [s for s in ("train", "test") if s in self.splits]
        counts = {s: self.splits[s].rows for s in order}
        files = [rel for s in order for rel in self.splits[s].finish(s)]
        if self.cfg.format == "datasets":
            import datasets
            import pyarrow as pa

            tables = {s: pa.ipc.open_file(pa.memory_map(str(self.splits[s].parts[0]))).read_all() for s in order}
            datasets.DatasetDict({s: datasets.Dataset(t) for s, t in tables.items()}).save_to_disk(str(self.folder))
            del tables
            shutil.rmtree(self.folder / ".staging")
            files = sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file())
        return counts, files


def _length_summary(df: pl.DataFrame) -> dict[str, Any]:
    """Chosen vs rejected lengths over the kept pairs (tokens where every candidate has a count, else characters),
    with the exact results `statistics.mean` and `median` would give."""
    n = df.height
    if not n:
        return {"n_pairs": 0, "measure": "characters", "chosen_longer_share": None, "chosen_values": [], "rejected_values": []}
    tokens = df["c_tokens"].null_count() == 0 and df["r_tokens"].null_count() == 0
    ch = (df["c_tokens"] if tokens else df["c_chars"]).cast(pl.Int64)
    rj = (df["r_tokens"] if tokens else df["r_chars"]).cast(pl.Int64)
    return {
        "n_pairs": n,
        "measure": "tokens" if tokens else "characters",
        "chosen_mean": _mean(ch),
        "chosen_median": _median(ch),
        "rejected_mean": _mean(rj),
        "rejected_median": _median(rj),
        "chosen_longer_share": int((ch > rj).sum()) / n,
        "chosen_shorter_share": int((ch < rj).sum()) / n,
        "chosen_values": ch.to_list(),
        "rejected_values": rj.to_list(),
    }


def _mean(s: pl.Series) -> int | float:
    total, n = int(s.sum()), s.len()  # type: ignore[arg-type]
    return total // n if total % n == 0 else total / n


def _median(s: pl.Series) -> int | float:
    v = s.sort()
    n = v.len()
    if n % 2:
        return int(v[n // 2])
    return (int(v[n // 2 - 1]) + int(v[n // 2])) / 2


# -- groups -----------------------------------------------------------------------------------------


_RANKING_COLS: dict[str, pl.DataType] = {
    "judge_hash": pl.String(),
    "strategy": pl.String(),
    "candidate_ids": pl.List(pl.String),
    "ranks": pl.List(pl.Int64),
    "scores": pl.List(pl.Float64),
    "best_id": pl.String(),
    "worst_id": pl.String(),
    "failures": pl.Int64(),
    "complete": pl.Boolean(),
}


def _normalized(rankings: pl.DataFrame) -> pl.DataFrame:
    """The ranking columns export reads, null where a shard had none (the rows' `.get` of before)."""
    cols = [pl.col("prompt_id")] + [
        (pl.col(c) if c in rankings.columns else pl.lit(None)).cast(t).alias(c) for c, t in _RANKING_COLS.items()
    ]
    df = rankings.select(cols)
    return df.with_columns(pl.col("candidate_ids").fill_null(pl.lit([], dtype=pl.List(pl.String))))


def _in_prompt_order(rankings: pl.DataFrame, prompts: pl.LazyFrame) -> pl.DataFrame:
    """Rankings sorted as prompts.parquet lists the prompts, with that place as `_order`."""
    order = (
        prompts.select("prompt_id").with_row_index("_order").group_by("prompt_id").agg(pl.col("_order").max()).collect()
    )
    df = rankings.join(order, on="prompt_id", how="left", maintain_order="left")
    missing = df.filter(pl.col("_order").is_null())["prompt_id"].to_list()
    if missing:
        raise PrefdataError(
            f"{len(missing)} ranked prompt(s) are not in prompts.parquet (e.g. {missing[0]}); "
            "the run directory is inconsistent, re-run `prefdata generate` on it"
        )
    return df.with_columns(pl.col("_order").cast(pl.Int64)).sort("_order", maintain_order=True)


def _checked_candidates(run: RunDir) -> tuple[pl.LazyFrame, pl.DataFrame, bool]:
    """The candidates scan with the columns export reads (typed nulls where no shard has one); every candidate id
    with its shard, read once for the duplicate-text check and the ranked-id check; and whether some id is written
    more than once. The same id with two texts is the error of `RunDir.read_candidates` (found from the ids
    first, so the texts of ids written once are never read)."""
    scan = run.scan_candidate_shards(["candidate_id", *CAND_FIELDS])
    if scan is None:
        raise PrefdataError(f"{run.path} has no candidates; run `prefdata generate --run {run.path}` first")
    ids = scan.select("candidate_id", "_shard", "sampler_hash").collect()
    repeated = True
    if {"candidate_id", "text"} <= run.candidate_column_names():
        repeated = bool(ids["candidate_id"].is_duplicated().any())
        run.check_candidate_texts(ids)  # rank's check: only the texts of ids written twice are read
    return scan.select("candidate_id", *[pl.col(c).cast(t) for c, t in CAND_FIELDS.items()]), ids, repeated


def _check_samplers(run: RunDir, meta: dict[str, Any], rankings: pl.DataFrame, ids: pl.DataFrame, judge_hash: str,
                    wanted: str | None) -> None:  # fmt: skip
    """Refuse rankings that hold several samplers' candidates (ranked together, their pairs mix samplers) unless
    --sampler all, and rankings of another sampler than --sampler names. A one-sampler run checks one column."""
    present = ids["sampler_hash"].drop_nulls()
    if present.n_unique() > 1:  # only then: which of them these rankings hold
        ranked = rankings["candidate_ids"].explode().drop_nulls()
        present = ids.filter(pl.col("candidate_id").is_in(ranked.implode()))["sampler_hash"].drop_nulls()
    samplers = sorted(present.unique().to_list())
    if wanted == ALL:
        return
    if len(samplers) > 1:
        raise PrefdataError(
            f"the rankings of judge {judge_hash} rank the candidates of {len(samplers)} samplers together "
            f"({describe(meta, samplers)}), so its pairs would mix samplers; rank one sampler at a time "
            f"(`prefdata rank --run {run.path} --sampler HASH`) and export its rankings with --sampler HASH, or pass "
            f"--sampler {ALL} to export the mixed pairs"
        )
    if wanted is not None:
        choose_sampler(samplers, wanted, meta, f"the rankings of judge {judge_hash}", "export")


def _check_ranked_candidates(rankings: pl.DataFrame, have: pl.Series) -> None:
    ranked = rankings["candidate_ids"].explode().drop_nulls()
    missing = ranked.filter(~ranked.is_in(have.implode())).unique()
    if missing.len():
        raise PrefdataError(
            f"{missing.len()} ranked candidate id(s) are not in candidates/ (e.g. {missing.min()}); "
            "the rankings do not belong to this run's candidates"
        )


def _cut_inputs(run: RunDir, judge_hash: str) -> pl.DataFrame:
    """`truncated_inputs` as a frame (prompt_id, a_id), read lazily."""
    scan = run.scan_judgments(judge_hash)
    empty = pl.DataFrame(schema={"prompt_id": pl.String, "a_id": pl.String})
    if scan is None or "truncated" not in scan.collect_schema().names():
        return empty
    df = scan.filter(pl.col("truncated").cast(pl.Boolean).fill_null(False)).select("prompt_id", "a_id").unique()
    return df.collect().cast({"prompt_id": pl.String, "a_id": pl.String})


_VERDICT_COLS = ("prompt_id", "a_id", "b_id", "verdict", "winner_id", "content_key")


def _pairwise_judgments(run: RunDir, judge_hash: str) -> pl.LazyFrame | None:
    """The judgments scan when some call compared two candidates (a pointwise judge's run has none: then no group
    reads its judgments again)."""
    scan = run.scan_judgments(judge_hash)
    if scan is None or not {"prompt_id", "a_id", "b_id", "verdict"} <= set(scan.collect_schema().names()):
        return None
    return scan if scan.select(pl.col("b_id").is_not_null().any()).collect().item() else None


def _read_group(
    rankings: pl.DataFrame, prompts: pl.LazyFrame, cands: pl.LazyFrame, judgments: pl.LazyFrame | None, cut: pl.DataFrame,
    ends_only: bool = False, repeated: bool = True,
) -> GroupInput:
    """One group's prompts, candidates (one row per id, the first written; `repeated`: some id is written more
    than once in the run) and direct judge calls."""
    pids = rankings["prompt_id"]
    have = prompts.collect_schema().names()
    pr = prompts.filter(pl.col("prompt_id").is_in(pids.implode())).select(
        "prompt_id", "messages", pl.col("reference") if "reference" in have else pl.lit(None, dtype=pl.String).alias("reference")
    ).collect()
    pr = pr.unique("prompt_id", keep="last", maintain_order=True)
    if pr.schema["messages"] != MESSAGES:
        fields = pl.struct(pl.element().struct.field("role"), pl.element().struct.field("content"))
        pr = pr.with_columns(pl.col("messages").list.eval(fields).cast(MESSAGES))
    if ends_only:  # best-worst pairs read two texts per prompt, not every candidate's
        ids = pl.concat([rankings["best_id"], rankings["worst_id"]]).drop_nulls().unique()
    else:
        ids = rankings["candidate_ids"].explode().drop_nulls().unique()
    cd = cands.filter(pl.col("candidate_id").is_in(ids.implode())).collect()
    if repeated:
        cd = cd.unique("candidate_id", keep="first", maintain_order=True)
    verdicts = None
    if judgments is not None:
        jcols = judgments.collect_schema().names()
        if {"prompt_id", "a_id", "b_id", "verdict"} <= set(jcols):
            sel = [pl.col(c) if c in jcols else pl.lit(None, dtype=pl.String).alias(c) for c in _VERDICT_COLS]
            verdicts = (
                judgments.filter(pl.col("prompt_id").is_in(pids.implode()) & pl.col("b_id").is_not_null())
                .select(sel)
                .collect()
                .cast(dict.fromkeys(_VERDICT_COLS, pl.String))
            )
    return GroupInput(rankings, pr, cd, verdicts, cut.filter(pl.col("prompt_id").is_in(pids.implode())))


# -- statistics -------------------------------------------------------------------------------------


def ranking_stats(rankings: pl.DataFrame) -> dict[str, Any]:
    """Judge-side rates over every ranked prompt of this judge (not only the exported ones)."""

    def total(col: str) -> int | None:
        return int(rankings[col].fill_null(0).sum()) if col in rankings.columns else None

    comparisons = total("comparisons")
    out: dict[str, Any] = {
        "prompts": rankings.height,
        "comparisons": comparisons,
        "ties": total("ties"),
        "failures": total("failures"),
        "inconsistent": total("inconsistent"),
        "too_long": total("too_long"),
    }
    for k in ("ties", "failures", "inconsistent"):
        v = out[k]
        out[f"{k}_rate"] = (v / comparisons) if comparisons and v is not None else None
    if "consistency" in rankings.columns and rankings["consistency"].drop_nulls().len():
        out["consistency_mean"] = float(rankings["consistency"].drop_nulls().mean())  # type: ignore[arg-type]
    else:
        out["consistency_mean"] = None
    if "complete" in rankings.columns:
        out["complete_share"] = float(rankings["complete"].fill_null(False).mean())  # type: ignore[arg-type]
    if "strategy" in rankings.columns:
        out["strategies"] = dict(Counter(rankings["strategy"].fill_null("unknown").to_list()))
    if "best_id" in rankings.columns:
        out["no_preference"] = int(rankings["best_id"].is_null().sum())
    return out


# -- helpers ----------------------------------------------------------------------------------------


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PrefdataError(f"unknown {flag} {value!r}; choose one of {', '.join(allowed)}")


def _drops_text(drops: dict[str, int] | Counter[str]) -> str:
    order = list(DROP_REASONS)
    items = sorted(((k, v) for k, v in drops.items() if v), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    return ", ".join(f"{k} {v}" for k, v in items)


def _relax_hint(drops: Counter[str]) -> str:
    hints = {
        "truncated": "--keep-truncated",
        "judge_input_truncated": "--keep-truncated (or rank again with a larger --rm-max-length)",
        "inconsistent": "--keep-inconsistent",
        "below_margin": "a lower --min-margin",
        "margin_unknown": "--min-margin 0",
        "judge_failed": "a rerun of `prefdata rank` (it retries the failed judge calls)",
    }
    useful = [h for k, h in hints.items() if drops.get(k)]
    if useful:
        return "relax with " + " or ".join(useful)
    return "the judge found no strict preferences; check the rankings (ties, failures)"
