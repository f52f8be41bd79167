"""Content hashes of model folders, so a checkpoint overwritten in place is never mistaken for the old one.

A model is identified by what its files hold (weights, config, tokenizer, chat template), not by its path, file
names, sizes or mtimes, nor by files that record where it was trained (`training_args.bin`). Hashing a 15 GB model on every run would be slow, so each file's digest is cached under
the prefdata cache folder, keyed by the file's absolute path, size, mtime and ctime: a file is read again only
when one of these changes (an in-place overwrite changes the mtime and ctime even when the size stays the same).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prefdata.run.records import TRAIN_SUMMARY

_SKIP_SUFFIXES = (".md",)
# Not part of the model: the trainer's summary (run times) and the pickled TrainingArguments, which hold the
# absolute output and cache paths, so a checkpoint's hash changed with the workdir it was trained in (an iterate
# workdir moved and resumed met new sampler hashes)
_SKIP_NAMES = (TRAIN_SUMMARY, "training_args.bin")
_BLOCK = 1 << 22


def _cache_file(folder: Path) -> Path:
    from prefdata.models import cache_dir

    key = hashlib.sha256(str(folder).encode()).hexdigest()[:32]
    return cache_dir() / "fingerprints" / f"{key}.json"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def model_files(folder: Path) -> list[Path]:
    """The top-level files that make up a model (checkpoint-* subfolders, hidden files and docs are not part of it)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in _SKIP_SUFFIXES and p.name not in _SKIP_NAMES
    )


def folder_hash(folder: str | Path) -> str:
    """sha256 over (name, content digest) of every model file in `folder`; per-file digests are cached."""
    folder = Path(folder).expanduser().resolve()
    cache_path = _cache_file(folder)
    try:
        cached = json.loads(cache_path.read_text())
        if not isinstance(cached, dict):
            cached = {}
    except (OSError, ValueError):
        cached = {}
    fresh: dict[str, list] = {}
    total = hashlib.sha256()
    for f in model_files(folder):
        st = f.stat()  # follows symlinks (hub snapshots link to blobs)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        entry = cached.get(f.name)
        digest = entry[3] if isinstance(entry, list) and len(entry) == 4 and entry[:3] == stamp else _file_digest(f)
        fresh[f.name] = [*stamp, digest]
        total.update(f"{f.name}\0{digest}\n".encode())
    if fresh != cached:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(fresh))
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a read-only cache only costs speed
    return total.hexdigest()


def model_hash(model: str) -> str:
    """Content hash of a local model folder; for a hub model, the hash of its commit (a git content hash), read
    from the local snapshot or, before the first download, from the Hub. The commit is the same before and after
    the download, so a killed first run with a hub model resumes, and its reference cache is found again.
    The name alone only when neither the cache nor the Hub knows the model (it cannot be loaded either)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return folder_hash(p)
    commit = hub_commit(model)
    key = f"hub:{model}@{commit}" if commit else f"hub:{model}"
    return hashlib.sha256(key.encode()).hexdigest()


def hub_commit(model: str) -> str | None:
    """The commit of a hub model: its cached snapshot's folder name, else the Hub's current revision."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True)).name
    except Exception:  # not in the local cache (or not a valid repo id)
        pass
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(model).sha
    except Exception:  # offline, unknown or private: nothing to read
        return None
