"""The data files of an export, one writer per format behind one mapping (WRITERS), written by a background thread."""

from __future__ import annotations

import shutil
import sys
from collections import deque
from pathlib import Path
from typing import Any

import polars as pl


def data_file_patterns(fmt: str, splits: list[str]) -> dict[str, str]:
    return {s: WRITERS[fmt].pattern(s) for s in splits}


class Background:
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


class _ParquetFile:
    """An open parquet data file (zstd level 3, like polars' default); every chunk is cast to the first one's schema."""

    def __init__(self, path: Path, bg: Background) -> None:
        self.path, self.bg = path, bg
        self._w: Any = None
        self.schema: Any = None

    def write(self, part: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = part.to_arrow()
        if self._w is None:
            self.schema = table.schema
            self._w = pq.ParquetWriter(self.path, table.schema, compression="zstd", compression_level=3)
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        self.bg.run(self._w.write_table, table)

    def close(self) -> None:
        if self._w is not None:
            self.bg.run(self._w.close)  # after this file's queued writes


class _JsonlFile:
    """An open jsonl data file, one row per line."""

    def __init__(self, path: Path, bg: Background) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, part: pl.DataFrame) -> None:
        part.write_ndjson(self.fh)

    def close(self) -> None:
        self.fh.close()


class _ArrowFile:
    """An Arrow IPC file: the datasets format's staging, turned into a `datasets` folder when the export ends."""

    def __init__(self, path: Path, bg: Background) -> None:
        self.path, self.bg = path, bg
        self._w: Any = None

    def write(self, part: pl.DataFrame) -> None:
        import pyarrow as pa

        table = part.to_arrow()
        if self._w is None:
            self._w = pa.ipc.new_file(str(self.path), table.schema)
        self.bg.run(self._w.write_table, table)

    def close(self) -> None:
        if self._w is not None:
            self.bg.run(self._w.close)


class _DataFiles:
    """A format written as data files `data/<split>-<i>-of-<n>.<ext>`, `max_rows_per_file` rows each."""

    def __init__(self, ext: str, file: type[_ParquetFile | _JsonlFile]) -> None:
        self.ext, self.file = ext, file

    staging = "data"  # where the files are written before the folder is complete

    def pattern(self, split: str) -> str:
        return f"data/{split}-*.{self.ext}"

    def rows_per_file(self, max_rows: int) -> int:
        return max_rows

    def final_names(self, split: str, n: int) -> list[str]:
        return [f"data/{split}-{i:05d}-of-{n:05d}.{self.ext}" for i in range(n)]

    def finish(self, folder: Path, splits: dict[str, SplitFiles], files: list[str]) -> list[str]:
        return files


class _DatasetsFolder:
    """The `datasets` format: one Arrow file per split, saved with `DatasetDict.save_to_disk` at the end."""

    staging = ".staging"
    file = _ArrowFile

    def pattern(self, split: str) -> str:
        return f"{split}/data-*.arrow"

    def rows_per_file(self, max_rows: int) -> int:
        return sys.maxsize

    def final_names(self, split: str, n: int) -> list[str]:
        return []

    def finish(self, folder: Path, splits: dict[str, SplitFiles], files: list[str]) -> list[str]:
        import datasets
        import pyarrow as pa

        tables = {s: pa.ipc.open_file(pa.memory_map(str(f.parts[0]))).read_all() for s, f in splits.items()}
        datasets.DatasetDict({s: datasets.Dataset(t) for s, t in tables.items()}).save_to_disk(str(folder))
        del tables
        shutil.rmtree(folder / self.staging)
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# One writer per format: a new format is one class and one entry here.
WRITERS: dict[str, _DataFiles | _DatasetsFolder] = {
    "parquet": _DataFiles("parquet", _ParquetFile), "jsonl": _DataFiles("jsonl", _JsonlFile), "datasets": _DatasetsFolder(),
}


FORMATS = tuple(WRITERS)


class SplitFiles:
    """One split's data files, appended to a chunk at a time: `max_rows_per_file` rows each, as when the whole
    split was sliced at once; named `<split>-<i>-of-<n>` once n is known."""

    def __init__(self, folder: Path, split: str, fmt: str, max_rows: int, bg: Background) -> None:
        self.writer = WRITERS[fmt]
        self.folder, self.split, self.max_rows, self.bg = folder, split, self.writer.rows_per_file(max_rows), bg
        self.parts: list[Path] = []
        self.rows = 0
        self._in_file = 0
        self._out: _ParquetFile | _JsonlFile | _ArrowFile | None = None

    def write(self, df: pl.DataFrame) -> None:
        while df.height:
            if self._out is None:
                self._out = self._open()
            take = min(self.max_rows - self._in_file, df.height)
            self._out.write(df.slice(0, take))
            self._in_file += take
            self.rows += take
            df = df.slice(take)
            if self._in_file == self.max_rows:
                self._close()

    def _open(self) -> _ParquetFile | _JsonlFile | _ArrowFile:
        path = self.folder / f".{self.split}-{len(self.parts):05d}.part"
        self.parts.append(path)
        self._in_file = 0
        return self.writer.file(path, self.bg)

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def finish(self, name: str) -> list[str]:
        """Close the last file and give the files their final names (`name`: the split they end up in)."""
        self._close()
        self.bg.drain()
        rels = self.writer.final_names(name, len(self.parts))
        if not rels:  # the datasets folder: its files are written at the end
            return rels
        for part, rel in zip(self.parts, rels, strict=True):
            part.rename(self.folder.parent / rel)
        return rels
