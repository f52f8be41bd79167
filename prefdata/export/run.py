"""The export run: stream the ranked prompts in groups, pair them, write the data files, the card and the folder."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import polars as pl

from prefdata.console import progress, terminal
from prefdata.errors import PrefdataError
from prefdata.export.card import build_card, plot_lengths
from prefdata.export.config import ExportConfig
from prefdata.export.folder import check_out, clean_stale, export_lock, swap_into_place, temp_folder, write_manifest
from prefdata.export.inputs import (
    _check_full_order,
    _check_ranked_candidates,
    _check_samplers,
    _checked_candidates,
    _cut_inputs,
    _final,
    _in_prompt_order,
    _normalized,
    _pairwise_judgments,
    _read_group,
    pick_judge,
    split_prompt_ids,
)
from prefdata.export.summary import ExportSummary, drops_text, length_summary, ranking_stats, relax_hint
from prefdata.export.tables import (
    build_group,
    merge_events,
)
from prefdata.export.writers import WRITERS, Background, SplitFiles, data_file_patterns
from prefdata.run.records import MESSAGES
from prefdata.run.store import RunDir, check_writable, command_line

# Ranked prompts read, joined and paired at a time: export's peak memory follows this, not the run's size.
GROUP_PROMPTS = 10_000


# Output rows given their texts at a time (a group's `all` pairs can be many more than its candidates).
CHUNK_ROWS = 20_000


def export_run(run: RunDir, cfg: ExportConfig) -> ExportSummary:
    """Write one judge's rankings of `run` as a dataset folder with its card; return what was written.

    Works in groups of GROUP_PROMPTS ranked prompts (in prompts.parquet order): each group's prompts, candidates
    and judge calls are read lazily (`scan_parquet`, filtered to the group), its pair table is built with polars
    (prefdata.export.tables) and its rows are appended to the data files, so memory follows the group, not the
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
    stderr = "score_stderr" in rankings.columns  # sort rankings: strengths with standard errors
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
        writer = _DataWriter(None if setup_error else tmp, cfg, stderr)
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
                f"nothing to export: every pair was filtered out ({drops_text(drops) or 'no pairs'}); " + relax_hint(drops)
            )
        if cfg.shape == "string" and n_multi:
            raise PrefdataError(
                f"--shape string needs single-message prompts, but {n_multi} exported rows have a system message or "
                "several turns; use --shape conversational"
            )
        if setup_error is not None:
            raise setup_error
        splits, files = writer.finish()
        lengths = length_summary(pl.concat(lengths_parts, how="vertical_relaxed"))
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
            data_files=data_file_patterns(cfg.format, list(splits)),
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


def _schema(shape: str, stderr: bool = False) -> dict[str, pl.DataType]:
    """The columns of a shape; `stderr`: the rankings carry the scores' standard errors (sort), and the ranking
    shape then has them too, as `score_stderrs` (other rankings keep the columns they always had)."""
    if shape == "ranking":
        return {
            "prompt_id": pl.String(),
            "prompt": MESSAGES,
            "completions": pl.List(pl.String),
            "candidate_ids": pl.List(pl.String),
            "ranks": pl.List(pl.Int64),
            "scores": pl.List(pl.Float64),
            **({"score_stderrs": pl.List(pl.Float64)} if stderr else {}),
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


class _DataWriter:
    """The data files of an export, written a chunk of rows at a time into its temp folder (or nowhere, when
    the folder cannot be written: the export then only counts, to raise its own errors first)."""

    def __init__(self, folder: Path | None, cfg: ExportConfig, stderr: bool = False) -> None:
        self.folder, self.cfg = folder, cfg
        self.schema = {k: v for k, v in _schema(cfg.shape, stderr).items() if k != "_n_turns"}
        self.splits: dict[str, SplitFiles] = {}
        self.bg = Background()
        if folder is not None:
            folder.mkdir(parents=True)
            (folder / WRITERS[cfg.format].staging).mkdir()

    def write(self, chunk: pl.DataFrame) -> None:
        if self.folder is None or not chunk.height:
            return
        test = chunk["_test"]
        rows = chunk.select([pl.col(k).cast(v) for k, v in self.schema.items()])
        for split, mask in (("train", ~test), ("test", test)):
            part = rows.filter(mask)
            if part.height:
                if split not in self.splits:
                    self.splits[split] = SplitFiles(self.folder / WRITERS[self.cfg.format].staging, split, self.cfg.format,
                                                     self.cfg.max_rows_per_file, self.bg)
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
        files = WRITERS[self.cfg.format].finish(self.folder, {s: self.splits[s] for s in order}, files)
        return counts, files
