"""Read prompts from a file or a saved `datasets` folder into the run's prompt table.

Reads: jsonl, json, parquet, csv, or a folder written by `Dataset.save_to_disk`.
Writes the columns: prompt_id, messages (list of {role, content}), source (the other fields, as JSON),
reference (optional reference answer, for the AIPO "ground truth as a candidate" option).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from prefdata.errors import PrefdataError
from prefdata.run.records import PROMPT_SCHEMA, prompt_id

AUTO_FIELDS = ("messages", "prompt", "turns", "instruction", "question")
ROLES = {"system", "user", "assistant"}
BUNDLED = Path(__file__).parents[1] / "data" / "mt_bench_questions.jsonl"
# Prompt sets shipped in the package, picked by name (`--prompts arithmetic` or `--prompts bundled:arithmetic`).
# arithmetic / arithmetic-eval: written by scripts/make_arithmetic.py; the answer is in the `answer` field.
BUNDLED_SETS = {
    "mt-bench": BUNDLED,
    "arithmetic": BUNDLED.parent / "arithmetic.jsonl",
    "arithmetic-eval": BUNDLED.parent / "arithmetic_eval.jsonl",
}


def resolve_prompt_path(path: str | Path | None) -> Path:
    """A prompt file path, or a bundled set's file: None is MT-Bench; a bundled name wins only if no such file exists."""
    if path is None:
        return BUNDLED
    s = str(path)
    name = s.removeprefix("bundled:")
    if s.startswith("bundled:") or not Path(s).exists():
        if name in BUNDLED_SETS:
            return BUNDLED_SETS[name]
        if s.startswith("bundled:"):
            raise PrefdataError(f"no bundled prompt set {name!r}; bundled sets: {', '.join(BUNDLED_SETS)}")
    return Path(s)


@dataclass
class PromptSet:
    table: pl.DataFrame  # prompt_id, messages, source, reference
    n_read: int
    n_duplicates: int
    field: str


def read_utf8(path: Path, what: str = "file") -> str:
    """The text of a file that must be UTF-8: a binary or differently encoded file, or one that cannot be read,
    is one clear error instead of a decoder traceback or silently mangled prompts."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PrefdataError(f"cannot read {what} {path}: {e.strerror or e}; check that it exists and is readable") from e
    if b"\x00" in data[:65536]:
        raise PrefdataError(f"{what} {path} is binary, not text; pass a UTF-8 .jsonl/.json/.csv file or a .parquet file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PrefdataError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); re-save it as UTF-8"
        ) from e


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise PrefdataError(
            f"prompt file {path} does not exist; pass a .jsonl/.json/.parquet/.csv file, a datasets folder, or a bundled "
            f"set ({', '.join(BUNDLED_SETS)})"
        )
    if path.is_dir():
        if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            raise PrefdataError(f"{path} is a folder but not a `datasets` folder saved with save_to_disk")
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets/pyarrow raise many types for a damaged folder
            raise PrefdataError(f"{path} cannot be loaded as a `datasets` folder ({type(e).__name__}: {e})") from e
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        return ds.to_list()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(read_utf8(path, "prompt file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrefdataError(f"{path}: line {lineno} is not valid JSON ({e.msg}); fix or remove that line") from e
            if not isinstance(obj, dict):
                raise PrefdataError(f"{path}: line {lineno} is not a JSON object")
            rows.append(obj)
        return rows
    if suffix == ".json":
        try:
            obj = json.loads(read_utf8(path, "prompt file"))
        except json.JSONDecodeError as e:
            raise PrefdataError(f"{path}: not valid JSON at line {e.lineno} ({e.msg})") from e
        if isinstance(obj, dict):
            for key in ("data", "rows", "prompts"):
                if isinstance(obj.get(key), list):
                    obj = obj[key]
                    break
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise PrefdataError(f"{path}: expected a JSON list of objects")
        return obj
    if suffix == ".parquet":
        try:
            return pl.read_parquet(path).to_dicts()
        except OSError as e:
            raise PrefdataError(f"cannot read prompt file {path}: {e.strerror or e}; check that it is readable") from e
        except Exception as e:  # noqa: BLE001 - polars raises ComputeError and others for a damaged file
            raise PrefdataError(f"prompt file {path} is not a valid parquet file ({_first_line(e)}); re-export it") from e
    if suffix == ".csv":
        text = read_utf8(path, "prompt file")
        try:
            return pl.read_csv(io.StringIO(text), infer_schema_length=0).to_dicts()
        except pl.exceptions.NoDataError:
            return []
        except pl.exceptions.PolarsError as e:
            raise PrefdataError(f"prompt file {path} is not a valid CSV file ({_first_line(e)}); fix it or use .jsonl") from e
    raise PrefdataError(f"{path}: unknown prompt file type {suffix!r}; use .jsonl, .json, .parquet, .csv or a datasets folder")


def _to_messages(value: Any, field: str, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise PrefdataError(f"{where}: field {field!r} is empty; remove the row or fill in the prompt")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        # MT-Bench `turns`: the first user turn.
        return _to_messages(value[0], field, where)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        msgs = []
        for m in value:
            role, content = m.get("role"), m.get("content")
            if role not in ROLES or not isinstance(content, str):
                raise PrefdataError(
                    f"{where}: field {field!r} must be a list of {{role, content}} messages with role in system/user/assistant"
                )
            msgs.append({"role": role, "content": content})
        if msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]  # a conversation with its answer: the prompt is everything before it
        if not msgs or msgs[-1]["role"] != "user" or not msgs[-1]["content"].strip():
            raise PrefdataError(f"{where}: field {field!r} must end with a non-empty user message")
        return msgs
    raise PrefdataError(f"{where}: field {field!r} must be a string, a list of strings (turns) or a list of messages")


def load_prompts(
    path: str | Path | None,
    field: str | None = None,
    system_prompt: str | None = None,
    reference_field: str | None = None,
    limit: int | None = None,
) -> PromptSet:
    """Read prompts, build canonical messages, give each a stable id, drop duplicates (counted)."""
    p = resolve_prompt_path(path)
    rows = read_rows(p)
    if not rows:
        raise PrefdataError(f"{p} has no rows; give a file with at least one prompt")
    if field is None:
        keys = set().union(*(r.keys() for r in rows[:50]))
        field = next((f for f in AUTO_FIELDS if f in keys), None)
        if field is None:
            raise PrefdataError(
                f"{p}: no prompt field found (looked for {', '.join(AUTO_FIELDS)}; columns are {', '.join(sorted(keys))}); "
                "choose one with --prompt-field"
            )
    out_ids, out_msgs, out_src, out_ref = [], [], [], []
    seen: set[str] = set()
    dups = 0
    for i, row in enumerate(rows):
        where = f"{p.name} row {i + 1}"
        if field not in row or row[field] is None:
            raise PrefdataError(f"{where}: missing field {field!r}; choose the prompt column with --prompt-field")
        msgs = _to_messages(row[field], field, where)
        if system_prompt and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system_prompt}] + msgs
        pid = prompt_id(msgs)
        if pid in seen:
            dups += 1
            continue
        seen.add(pid)
        ref = None
        if reference_field:
            if reference_field not in row:
                raise PrefdataError(f"{where}: missing reference field {reference_field!r}")
            r = row[reference_field]
            ref = r[0] if isinstance(r, list) and r else r
            ref = ref if isinstance(ref, str) and ref.strip() else None
        out_ids.append(pid)
        out_msgs.append(msgs)
        out_src.append(json.dumps({k: v for k, v in row.items() if k != field}, default=str, ensure_ascii=False))
        out_ref.append(ref)
        if limit is not None and len(out_ids) >= limit:
            break
    table = pl.DataFrame(
        {"prompt_id": out_ids, "messages": out_msgs, "source": out_src, "reference": out_ref},
        schema=PROMPT_SCHEMA,
    )
    return PromptSet(table=table, n_read=len(rows), n_duplicates=dups, field=field)
