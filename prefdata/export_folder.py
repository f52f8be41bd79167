"""The export folder on disk: written in a temp folder, marked with a manifest, swapped into place.

`--overwrite` replaces only a folder that prefdata wrote: one whose manifest (`.prefdata-export.json`) lists
every file it holds. Any other folder (a project that merely mentions prefdata in its README, an export with
files added by hand) is refused, so overwriting can never delete someone's work.

The temp and old folders beside `--out` carry the writing process's pid in their name
(`.tmp-export-<pid>-<rand>-<name>`); a later export removes those of processes that no longer run (a kill -9
leaves them behind), and puts back an old export whose replacement never arrived.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from prefdata import __version__
from prefdata.errors import PrefdataError

MANIFEST = ".prefdata-export.json"
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
