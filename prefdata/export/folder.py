"""The export folder on disk: written in a temp folder, marked with a manifest, swapped into place.

`--overwrite` replaces only a folder that prefdata wrote: one whose manifest (`.prefdata-export.json`) lists
every file it holds. Any other folder (a project that merely mentions prefdata in its README, an export with
files added by hand) is refused, so overwriting can never delete someone's work.

The temp and old folders beside `--out` carry the writing process's pid in their name
(`.tmp-export-<pid>-<rand>-<name>`); a later export removes those of processes that no longer run (a kill -9
leaves them behind), and puts back an old export whose replacement never arrived.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from prefdata import __version__
from prefdata.errors import PrefdataError
from prefdata.run.store import MANIFEST

# Folders other prefdata stages write inside an export: `prefdata train EXPORT` keeps its reference log-prob
# cache there (prefdata.train.data.REF_CACHE_FOLDER). An overwrite may replace them (they are caches).
OWNED_EXTRAS = (".prefdata_ref_cache",)
_TEMP = re.compile(r"^\.(tmp|old)-export-(\d+)-([0-9a-f]{8})-(.+)$")
_LEGACY_TEMP = re.compile(r"^\.(tmp|old)-export-([0-9a-f]{8})-(.+)$")  # before the pid was in the name
_LEGACY_AGE_S = 24 * 3600


def temp_folder(out: Path, kind: str = "tmp") -> Path:
    """A fresh sibling of `out` named after this process, so a stale one can be told from a live one."""
    return out.parent / f".{kind}-export-{os.getpid()}-{uuid.uuid4().hex[:8]}-{out.name}"


def write_manifest(folder: Path, files: list[str]) -> None:
    """Record the files this export wrote (relative posix paths and sizes); written last, in the temp folder."""
    entries = {rel: (folder / rel).stat().st_size for rel in sorted(files)}
    doc = {"written_by": "prefdata", "prefdata_version": __version__, "files": entries}
    (folder / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that exists, is not empty, and is not (only) an export prefdata wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PrefdataError(f"--out {out} is a file; pass a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise PrefdataError(f"--out {out} is not empty; pass --overwrite to replace it, or choose another --out")
    listed = _manifest_files(out)
    if listed is None:
        raise PrefdataError(
            f"--out {out} is not a prefdata export (no {MANIFEST} listing its files); refusing to overwrite it: "
            "choose another --out, or empty the folder yourself"
        )
    allowed = set(listed) | {MANIFEST}
    allowed |= {p.as_posix() for rel in listed for p in Path(rel).parents if str(p) != "."}
    extra = sorted(
        rel
        for p in out.rglob("*")
        if (rel := p.relative_to(out).as_posix()) not in allowed and rel.split("/")[0] not in OWNED_EXTRAS
    )
    if extra:
        raise PrefdataError(
            f"--out {out} holds {len(extra)} file(s) prefdata did not write (e.g. {extra[0]}); refusing to overwrite "
            "it: move them out, or choose another --out"
        )


@contextlib.contextmanager
def export_lock(out: Path) -> Iterator[None]:
    """One export per --out at a time, held from `check_out` to the swap: two exports to one folder both passed
    `check_out` and the later silently replaced the earlier. The second stops at once with one line.

    The lock file (`.lock-export-NAME` beside `out`) is a flock, so a kill -9 frees it; the holder removes the
    file on release, and a process that locked a file removed meanwhile locks the new one instead. Folders
    made here for the lock file are removed again when left empty."""
    parent = out.parent
    missing = [p for p in (parent, *parent.parents) if not p.exists()]  # innermost first
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f".lock-export-{out.name}"
    fd = -1
    try:
        while fd < 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                fd = -1
                who, stop = (f"pid {pid}", f"kill {pid}") if pid.isdigit() else ("see `ps`", "stop it")
                raise PrefdataError(
                    f"another `prefdata export` ({who}) is writing --out {out}; wait for it to finish, or stop it "
                    f"({stop}) and export again, or choose another --out"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed the file between our open and our lock
                os.close(fd)
                fd = -1
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        if fd >= 0:
            path.unlink(missing_ok=True)  # while still holding it: nobody else can hold this file now
            os.close(fd)
        for p in missing:
            try:
                p.rmdir()
            except OSError:
                break


def swap_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished temp folder with two renames (the old export is removed after)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = temp_folder(out, "old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def clean_stale(parent: Path) -> list[str]:
    """Remove the temp folders of dead exports beside `parent`'s exports; restore an old export left without
    its replacement. Returns the names removed or restored."""
    done: list[str] = []
    if not parent.is_dir():
        return done
    for p in sorted(parent.iterdir()):
        m = _TEMP.match(p.name)
        if m:
            kind, pid, name = m.group(1), int(m.group(2)), m.group(4)
            if _alive(pid):
                continue
        else:
            legacy = _LEGACY_TEMP.match(p.name)
            if not legacy or time.time() - p.stat().st_mtime < _LEGACY_AGE_S:
                continue
            kind, name = legacy.group(1), legacy.group(3)
        target = parent / name
        if kind == "old" and not target.exists() and p.is_dir():
            p.rename(target)  # killed between the two renames of swap_into_place: the old export is the data
        else:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        done.append(p.name)
    return done


def _manifest_files(out: Path) -> list[str] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("written_by") == "prefdata" else None
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        return None
    return [k for k in files if not Path(k).is_absolute() and ".." not in Path(k).parts]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def manifest_files(folder: Path) -> list[str] | None:
    """The files the export's manifest lists (relative posix paths), or None when `folder` has no readable one."""
    return _manifest_files(folder)
