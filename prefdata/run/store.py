"""The run directory: run.json, prompts.parquet and append-only parquet shards.

`RunDir` is the only code that knows the folder layout: stages read and write candidates, judgments (per
judge hash) and rankings through its typed methods, with the schemas of records.py, and the de-duplication
rules (one row per candidate id; the newest ranking row per prompt) live here once.

Every file is written atomically (a temp file in the same folder, fsync, then rename), so a crash or
Ctrl-C leaves either the whole shard or nothing. Readers skip temp files (names starting with '.').
A stage that starts again reads the ids already in its shards and does only the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from prefdata import __version__
from prefdata.errors import PrefdataError
from prefdata.run.records import CANDIDATE_SCHEMA, JUDGMENT_SCHEMA, MESSAGES, RANKING_SCHEMA, SORT_RANKING_SCHEMA
from prefdata.secrets import command_line

# The file that marks an export folder (prefdata.export.folder writes it): no run is ever written in one.
MANIFEST = ".prefdata-export.json"


def refuse_export_folder(folder: Path) -> None:
    """Refuse to write a run (or a training output) in an export folder or below one.

    An export holds exactly the files its manifest lists, and `push` uploads exactly those: run.json, shards or
    logs written in there would corrupt the dataset, so every stage that writes a run stops here first."""
    here = folder.absolute()
    for p in (here, *here.parents):
        if (p / MANIFEST).is_file():
            where = "is an export folder" if p == here else f"is inside the export folder {p}"
            raise PrefdataError(f"{folder} {where} (it holds {MANIFEST}), not a run directory; choose another folder")


MESSAGES_DTYPE = MESSAGES  # the name the test and bench run builders import (declared in records.py)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_parquet(path: Path, df: pl.DataFrame) -> None:
    atomic_write(path, df.write_parquet)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a hidden file beside `path`, synced, then renamed onto it: readers never see half a file.

    On any failure (a full disk, Ctrl-C) the temp file and the folders made for it are removed again."""
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
            for folder in made:  # innermost first; one another process has written into stays
                folder.rmdir()
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held while the block runs (processes sharing a run or the model cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def stage_lock(run_path: Path, stage: str, part: str | None = None, *, flag: str = "--run") -> Iterator[None]:
    """One process per stage (and part, e.g. a generate shard) and run directory, held until the block ends.

    Two identical `rank` or `generate` processes on one run would do every call twice and corrupt the counts,
    so the second one stops at once with one line naming the first one's pid. Parts (`--shard I/K`) lock
    separately and run side by side; each also holds the stage's lock shared, so a whole-run process and a
    part never overlap. The locks are flocks: they end with the process, also on kill -9. `flag` names the option
    that gave `run_path` (train's is --output-dir), so an unwritable one is named as the user typed it.
    """
    refuse_export_folder(run_path)  # before anything is created in it
    stage_name = f".lock-{stage}"
    names = [stage_name] + ([f"{stage_name}-{re.sub(r'[^A-Za-z0-9]+', 'of', part)}"] if part else [])
    created = not run_path.exists()
    files = []
    try:
        try:
            run_path.mkdir(parents=True, exist_ok=True)
            files = [open(run_path / n, "a+") for n in names]  # noqa: SIM115 - held open for the whole block
        except OSError as e:
            where = "the run directory" if flag == "--run" else flag
            raise PrefdataError(
                f"cannot write in {where} {run_path} ({e.strerror or e}); pick a writable {flag}"
            ) from e
        if part:  # the stage lock shared (a whole-run process holds it exclusive), then the part's own
            _flock_or_fail(files[0], fcntl.LOCK_SH, run_path, f"prefdata {stage}")
            _flock_or_fail(files[1], fcntl.LOCK_EX, run_path, f"prefdata {stage} --shard {part}")
        else:
            _flock_or_fail(files[0], fcntl.LOCK_EX, run_path, f"prefdata {stage}")
        mine = files[-1]
        mine.seek(0)
        mine.truncate()
        mine.write(f"{os.getpid()}\n")
        mine.flush()
        try:
            yield
        finally:
            for f in reversed(files):
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        for f in files:
            f.close()
        if created:  # a stage that failed before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                if set(os.listdir(run_path)) <= set(names):
                    for n in names:
                        (run_path / n).unlink(missing_ok=True)
                    run_path.rmdir()


def _flock_or_fail(f: IO[str], mode: int, run_path: Path, holder_cmd: str) -> None:
    """Take the lock now, or stop with one line naming the process that holds it."""
    try:
        fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    shared = False
    if mode == fcntl.LOCK_EX:  # held shared means `--shard` processes hold it, not an identical process
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            shared = True
        except BlockingIOError:
            pass
    f.seek(0)
    pid = "" if shared else f.read().strip()
    who, stop = (f"pid {pid}", f"kill {pid}") if pid else ("see `ps`", "stop them")
    what = f"{holder_cmd} --shard" if shared else holder_cmd
    raise PrefdataError(
        f"another `{what}` ({who}) is working on {run_path}; wait for it to finish, or stop it ({stop}) "
        "and run this command again to resume"
    ) from None


def check_writable(folder: Path, what: str) -> None:
    """Fail early, with one line, when `folder` (or the folder it would be created in) cannot be written,
    so that a stage never starts work it cannot save. Leaves nothing behind. An export folder is refused too."""
    refuse_export_folder(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise PrefdataError(f"{what} {folder} cannot be created: {probe} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise PrefdataError(
            f"{what} {folder} is not writable ({e.strerror or e} in {probe}); choose a location you can write to"
        ) from e


def read_parquet_dir(folder: Path) -> pl.DataFrame | None:
    """All finished shards of a folder as one frame (None when there are none)."""
    files = _shards(folder)
    if not files:
        return None
    return pl.concat([pl.read_parquet(p) for p in files], how="diagonal_relaxed")


class RunDir:
    """A run directory (see DESIGN.md for the layout)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    # -- layout -------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def prompts_file(self) -> Path:
        return self.path / "prompts.parquet"

    @property
    def candidates_dir(self) -> Path:
        return self.path / "candidates"

    def judgments_dir(self, judge_hash: str) -> Path:
        return self.path / "judgments" / judge_hash

    def rankings_dir(self, judge_hash: str) -> Path:
        return self.path / "rankings" / judge_hash

    def exports_dir(self, name: str) -> Path:
        """Where `prefdata export` writes the dataset named `name` when no --out is given. A name is one path
        component: `../x` or `/abs` would put the export outside `exports/`."""
        if not name or name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name or "\0" in name:
            raise PrefdataError(f"--name must be a plain folder name (no '/', '..' or absolute path), got {name!r}; "
                                "use --out to write the export elsewhere")
        return self.path / "exports" / name

    def judge_hashes(self) -> list[str]:
        """The judges with a rankings folder, sorted."""
        root = self.path / "rankings"
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []

    def exists(self) -> bool:
        return self.run_json.is_file()

    def require(self) -> RunDir:
        if not self.exists():
            raise PrefdataError(
                f"{self.path} is not a prefdata run (no run.json); create it with `prefdata generate --run {self.path}`"
            )
        return self

    # -- run.json -----------------------------------------------------------------------------
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock on the run (several processes or shards may share one run directory)."""
        return file_lock(self.path / ".lock")

    def stage_lock(self, stage: str, part: str | None = None) -> contextlib.AbstractContextManager[None]:
        """Exclusive per stage (and part) and run: see `stage_lock`."""
        return stage_lock(self.path, stage, part)

    def read_meta(self) -> dict[str, Any]:
        if not self.run_json.is_file():
            return {}
        try:
            return json.loads(self.run_json.read_text())
        except json.JSONDecodeError as e:
            raise PrefdataError(f"{self.run_json} is not valid JSON ({e}); restore it or start a new --run") from e

    def update_meta(self, fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write run.json under the lock, written atomically."""
        with self.lock():
            meta = self.read_meta()
            if not meta:
                meta = {"format": 1, "created": _now(), "prefdata_version": __version__, "stages": {}}
            fn(meta)
            meta["updated"] = _now()
            atomic_write_bytes(self.run_json, (json.dumps(meta, indent=2, default=str) + "\n").encode())
            return meta

    def record_stage(self, stage: str, key: str, entry: dict[str, Any]) -> None:
        """Merge `entry` into run.json at stages[stage][key]; keeps the command lines of every invocation."""

        def _fn(meta: dict[str, Any]) -> None:
            slot = meta.setdefault("stages", {}).setdefault(stage, {}).setdefault(key, {})
            commands = slot.get("commands", [])
            slot.update(entry)
            cmd = command_line()
            if cmd not in commands:
                commands.append(cmd)
            slot["commands"] = commands

        self.update_meta(_fn)

    # -- prompts ------------------------------------------------------------------------------
    def write_prompts(self, df: pl.DataFrame) -> pl.DataFrame:
        """Store prompts; a prompt already in the run is kept as it is (rows keyed by prompt_id)."""
        with self.lock():
            if self.prompts_file.is_file():
                old = pl.read_parquet(self.prompts_file)
                new = df.filter(~pl.col("prompt_id").is_in(old["prompt_id"].implode()))
                if new.height == 0:
                    return old
                df = pl.concat([old, new], how="diagonal_relaxed")
            atomic_write_parquet(self.prompts_file, df)
            return df

    def read_prompts(self) -> pl.DataFrame:
        if not self.prompts_file.is_file():
            raise PrefdataError(f"{self.path} has no prompts.parquet; run `prefdata generate --run {self.path}` first")
        return pl.read_parquet(self.prompts_file)

    # -- shards -------------------------------------------------------------------------------
    def write_shard(self, folder: Path, df: pl.DataFrame, tag: str = "") -> Path:
        """Append one shard; the name never collides across processes, shards or machines."""
        path = _new_shard(folder, tag)
        atomic_write_parquet(path, df)
        return path

    def write_candidates(self, rows: list[dict[str, Any]] | pl.DataFrame, tag: str = "") -> Path:
        """Append one shard of candidate rows (CANDIDATE_SCHEMA)."""
        df = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)
        return self.write_shard(self.candidates_dir, df, tag=tag)

    def read_candidates(self, unique: bool = False) -> pl.DataFrame | None:
        """Every candidate shard as one frame; `unique`: one row per candidate id (the first written). The same
        candidate id with two different texts is an error that names the shards: ranking one text and exporting
        the other would publish a pair nobody judged."""
        folder = self.candidates_dir
        files = _shards(folder)
        if not files:
            return None
        df = pl.concat([pl.read_parquet(p).with_columns(pl.lit(p.name).alias("_shard")) for p in files], how="diagonal_relaxed")
        if {"candidate_id", "text"} <= set(df.columns):
            check_one_text_per_id(df, folder)
        df = df.drop("_shard")
        return df.unique(subset=["candidate_id"], keep="first", maintain_order=True) if unique else df

    # -- judgments and rankings, per judge hash -----------------------------------------------------
    def write_judgments(self, judge_hash: str, rows: list[dict[str, Any]]) -> Path:
        """Append one shard of judge calls (JUDGMENT_SCHEMA); judgments are never rewritten."""
        return self.write_shard(self.judgments_dir(judge_hash), pl.DataFrame(rows, schema=JUDGMENT_SCHEMA))

    def read_judgments(self, judge_hash: str, columns: list[str] | None = None) -> pl.DataFrame | None:
        """Every judge call of one judge (None when there are none). `columns`: read only those (raw output can
        be big); a shard without one of them gets nulls there."""
        folder = self.judgments_dir(judge_hash)
        if columns is None:
            return read_parquet_dir(folder)
        files = _shards(folder)
        frames = []
        for p in files:
            have = pl.read_parquet_schema(p)
            frames.append(pl.read_parquet(p, columns=[c for c in columns if c in have]))
        if not frames:
            return None
        df = pl.concat(frames, how="diagonal_relaxed")
        return df.with_columns([pl.lit(None).alias(c) for c in columns if c not in df.columns])

    def scan_judgments(self, judge_hash: str) -> pl.LazyFrame | None:
        """Every judge call of one judge as one lazy frame (None when there are none): select the columns and
        filter the prompts needed before collecting (raw output can be big). A column no shard has is absent."""
        files = _shards(self.judgments_dir(judge_hash))
        if not files:
            return None
        return pl.concat([pl.scan_parquet(p) for p in files], how="diagonal_relaxed")

    def write_rankings(self, judge_hash: str, rows: list[dict[str, Any]]) -> Path:
        """One row per prompt: write the new shard, then remove the older ones (derived data, rebuilt each run)."""
        return self._swap_rankings(judge_hash, pl.DataFrame(rows, schema=RANKING_SCHEMA).write_parquet)

    def _swap_rankings(self, judge_hash: str, write: Callable[[Path], object]) -> Path:
        """Under the run's lock: one new rankings shard written by `write(path)`, then the older shards removed."""
        folder = self.rankings_dir(judge_hash)
        with self.lock():
            olds = sorted(folder.glob("shard-*.parquet")) if folder.is_dir() else []
            path = _new_shard(folder)
            atomic_write(path, write)
            for p in olds:
                p.unlink(missing_ok=True)
            return path

    def read_rankings(self, judge_hash: str) -> pl.DataFrame | None:
        """The rankings of one judge, one row per prompt (the newest row wins if a crash left two shards)."""
        files = _shards(self.rankings_dir(judge_hash))
        if not files:
            return None
        df = pl.concat([pl.read_parquet(p) for p in reversed(files)], how="diagonal_relaxed")
        return df.unique(subset=["prompt_id"], keep="first", maintain_order=True)

    # -- streaming access (rank reads one group of prompts at a time) -----------------------------------
    def candidate_shards(self) -> list[Path]:
        """The finished candidate shards in write order (the order `read_candidates` concatenates them in)."""
        return _shards(self.candidates_dir)

    def candidate_column_names(self) -> set[str]:
        """The columns of any candidate shard (read from the files' footers, no rows)."""
        return {c for p in self.candidate_shards() for c in pl.read_parquet_schema(p)}

    def scan_candidate_shards(self, columns: list[str], shards: list[int] | None = None) -> pl.LazyFrame | None:
        """The candidate rows of the given shards (indexes into `candidate_shards()`; default all) as one lazy frame
        in write order: `columns` (null where a shard lacks one) plus `_shard`, the shard's index. Nothing is read
        until it is collected, so filter by prompt or candidate ids first. No de-duplication (see read_candidates)."""
        files = self.candidate_shards()
        pick = range(len(files)) if shards is None else sorted(set(shards))
        scans = []
        for i in pick:
            have = pl.read_parquet_schema(files[i])
            lf = pl.scan_parquet(files[i]).select([c for c in columns if c in have])
            missing = [pl.lit(None, dtype=CANDIDATE_SCHEMA.get(c, pl.String)).alias(c) for c in columns if c not in have]
            scans.append(lf.with_columns([*missing, pl.lit(i, dtype=pl.Int32).alias("_shard")]).select([*columns, "_shard"]))
        return pl.concat(scans, how="diagonal_relaxed") if scans else None

    def check_candidate_texts(self, ids: pl.DataFrame) -> None:
        """The id check of `read_candidates` without reading every text: `ids` holds candidate_id and `_shard` of
        every candidate row (scan_candidate_shards order); only the texts of ids that occur twice are read. Raises
        the same error as read_candidates when one id has two different texts."""
        dup = ids.filter(pl.col("candidate_id").is_duplicated())
        if dup.height == 0:
            return
        lf = self.scan_candidate_shards(["candidate_id", "text"], dup["_shard"].unique().to_list())
        assert lf is not None
        names = [p.name for p in self.candidate_shards()]
        df = lf.filter(pl.col("candidate_id").is_in(dup["candidate_id"].unique().implode())).collect()
        df = df.with_columns(pl.Series("_shard", [names[i] for i in df["_shard"].to_list()], dtype=pl.String))
        check_one_text_per_id(df, self.candidates_dir)

    def write_judgment_columns(self, judge_hash: str, columns: dict[str, list[Any]]) -> Path:
        """`write_judgments` for rows given column by column (JUDGMENT_SCHEMA names; no per-row dicts)."""
        return self.write_shard(self.judgments_dir(judge_hash), pl.DataFrame(columns, schema=JUDGMENT_SCHEMA))

    def ranking_parts_dir(self, judge_hash: str) -> Path:
        """Where a running `rank` keeps the ranking rows of the prompt groups it has finished; hidden from every
        reader until `replace_rankings` makes them the rankings (a stale folder left by a kill is removed)."""
        return self.path / f".rank-parts-{judge_hash}"

    def write_ranking_part(self, judge_hash: str, df: pl.DataFrame) -> Path:
        """One group's ranking rows (the columns of RANKING_SCHEMA, and those of SORT_RANKING_SCHEMA it has) into
        ranking_parts_dir."""
        schema = RANKING_SCHEMA | {k: t for k, t in SORT_RANKING_SCHEMA.items() if k in df.columns}
        return self.write_shard(self.ranking_parts_dir(judge_hash), df.select(list(schema)).cast(schema))  # type: ignore[arg-type]

    def drop_ranking_parts(self, judge_hash: str) -> None:
        shutil.rmtree(self.ranking_parts_dir(judge_hash), ignore_errors=True)

    def replace_rankings(self, judge_hash: str, parts: list[Path]) -> Path:
        """`write_rankings` for rows written in parts: one new shard with the parts' rows in order (streamed, never
        all in memory), then the older shards removed."""
        if not parts:
            return self.write_rankings(judge_hash, [])
        return self._swap_rankings(judge_hash, pl.scan_parquet(parts).sink_parquet)


def check_one_text_per_id(df: pl.DataFrame, folder: Path) -> None:
    """The same candidate id with two texts (columns candidate_id, text, _shard) is an error naming the shards:
    ranking one text and exporting the other would publish a pair nobody judged."""
    clash = (
        df.group_by("candidate_id", maintain_order=True)
        .agg(pl.col("text").n_unique().alias("n"), pl.col("_shard").unique(maintain_order=True).alias("shards"))
        .filter(pl.col("n") > 1)
    )
    if clash.height:
        first = clash.row(0, named=True)
        where = " and ".join(str(folder / f) for f in first["shards"])
        raise PrefdataError(
            f"candidate id {first['candidate_id']} has different texts in {where} ({clash.height} id(s) in all): "
            f"the run mixes two generations under the same ids; move the shard you do not want out of {folder} and "
            "run again"
        )


def _new_shard(folder: Path, tag: str = "") -> Path:
    """A shard name that never collides across processes, shards or machines, and sorts in write order."""
    return folder / f"shard-{tag + '-' if tag else ''}{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"


def _shards(folder: Path) -> list[Path]:
    """The finished shards of a folder in write order (names start with the write time; temp files skipped)."""
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def host_tag() -> str:
    return socket.gethostname().split(".")[0][:24]
