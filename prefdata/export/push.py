"""Push an export folder to the Hugging Face Hub as a dataset repo.

One commit uploads exactly the files `--dry-run` lists: the files the export's manifest (`.prefdata-export.json`)
lists, and a folder that holds anything else (a run written into it, files added by hand) is refused; it
deletes remote data files (matched by the card's data_files or the export layout) that this export no longer
has, so the Hub serves exactly the rows `datasets.load_dataset(folder)` gives locally. The token is whatever
huggingface_hub finds (HF_TOKEN or the saved login) unless one is passed; it is never written anywhere.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prefdata.errors import PrefdataError
from prefdata.export.folder import MANIFEST, OWNED_EXTRAS, manifest_files
from prefdata.options import opt

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Where exports keep data (parquet/jsonl under data/, `datasets` folders per split): remote files here that the
# new export lacks are deleted, whatever the card says, so an old split never lingers in the repo.
EXPORT_LAYOUT = ("data/*", "*/data-*.arrow", "*/state.json", "*/dataset_info.json", "dataset_dict.json", "lengths.png")


@dataclass
class PushConfig:
    """Options of `prefdata push` (also readable from --config FILE.yaml)."""

    repo_id: str = opt("", "ORG/NAME of the dataset repo (created if missing).")
    private: bool = opt(False, "Create the repo private.")
    dry_run: bool = opt(False, "List what would be uploaded and deleted; contact nothing.")
    endpoint: str | None = opt(None, "Hub URL; none: HF_ENDPOINT or huggingface.co.")
    revision: str | None = opt(None, "Branch to commit to; none: main.")
    commit_message: str | None = opt(None, "Commit message; none: one naming the export.", flag=("--message", "--commit-message"))


@dataclass
class PushResult:
    repo_id: str
    url: str
    files: list[tuple[str, int]]
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    commit_url: str | None = None

    def lines(self) -> list[str]:
        size = sum(n for _, n in self.files)
        head = "would upload" if self.dry_run else "uploaded"
        out = [f"{head} {len(self.files)} files ({_human(size)}) to {self.url}"]
        out += [f"  {p}  {_human(n)}" for p, n in self.files]
        if self.dry_run:
            out.append("  (remote data files no longer in the export are deleted in the same commit)")
        out += [f"  deleted {p}" for p in self.deleted]
        if self.commit_url:
            out.append(f"commit: {self.commit_url}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def push(folder: str | Path, cfg: PushConfig, *, token: str | None = None) -> PushResult:
    """`prefdata push`: the export folder to the repo of `cfg` (see `push_export`)."""
    if not cfg.repo_id:
        raise PrefdataError("--repo-id ORG/NAME is required")
    return push_export(folder, cfg.repo_id, private=cfg.private, dry_run=cfg.dry_run, token=token, endpoint=cfg.endpoint,
                       revision=cfg.revision, commit_message=cfg.commit_message)  # fmt: skip


def export_files(folder: Path) -> list[tuple[str, int]]:
    """The files that make up the export (relative posix paths and sizes): exactly those its manifest lists.

    Refused: a folder without a manifest, a listed file that is missing, and any file the manifest does not list
    (only the manifest itself and the caches other stages keep in an export, OWNED_EXTRAS, are not data)."""
    listed = manifest_files(folder)
    if listed is None:
        raise PrefdataError(f"{folder} has no readable {MANIFEST}, so it is not an export prefdata wrote; run "
                            "`prefdata export` to write one, and push that")
    missing = sorted(rel for rel in listed if not (folder / rel).is_file())
    if missing:
        raise PrefdataError(f"{folder} lacks {len(missing)} file(s) its {MANIFEST} lists (e.g. {missing[0]}); "
                            "run `prefdata export` again")
    parents = {p.as_posix() for rel in listed for p in Path(rel).parents if str(p) != "."}
    allowed = {*listed, *parents, MANIFEST}
    extra = sorted(
        rel for p in folder.rglob("*")
        if (rel := p.relative_to(folder).as_posix()) not in allowed and rel.split("/")[0] not in OWNED_EXTRAS
    )
    if extra:
        raise PrefdataError(f"{folder} holds {len(extra)} file(s) the export did not write (e.g. {extra[0]}); push "
                            "uploads only an export as written: move them out, or export again to a new --out")
    return [(rel, (folder / rel).stat().st_size) for rel in sorted(listed)]


def card_data_patterns(readme: Path) -> list[str]:
    """The data_files patterns of the card's front matter: what the Hub serves as rows."""
    text = readme.read_text(encoding="utf-8")
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    meta: dict[str, Any] = (yaml.safe_load(m.group(1)) or {}) if m else {}
    patterns = []
    for conf in meta.get("configs") or []:
        data_files = conf.get("data_files") or []
        if isinstance(data_files, str):
            data_files = [{"path": data_files}]
        for df in data_files:
            paths = df.get("path") if isinstance(df, dict) else df
            patterns += [paths] if isinstance(paths, str) else list(paths or [])
    return patterns


def push_export(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload an export folder to the dataset repo `repo_id` in one commit (or only list it with dry_run)."""
    folder = Path(folder)
    readme = folder / "README.md"
    if not folder.is_dir():
        raise PrefdataError(f"{folder} is not a folder; pass an export folder written by `prefdata export`")
    if not readme.is_file():
        raise PrefdataError(f"{folder} has no README.md; it is not an export folder (run `prefdata export` first)")
    if not REPO_ID.match(repo_id or ""):
        raise PrefdataError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    files = export_files(folder)
    patterns = card_data_patterns(readme)
    if not any(fnmatch.fnmatch(p, pat) for p, _ in files for pat in patterns):
        raise PrefdataError(f"{folder}: no data file matches the card's data_files {patterns}; re-run `prefdata export`")

    from huggingface_hub import constants

    base = (endpoint or constants.ENDPOINT).rstrip("/")
    url = f"{base}/datasets/{repo_id}"
    if dry_run:
        return PushResult(repo_id=repo_id, url=url, files=files, dry_run=True)
    if constants.HF_HUB_OFFLINE:
        raise PrefdataError("HF_HUB_OFFLINE is set, so the Hub cannot be contacted; unset it to push (or use --dry-run)")

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=base, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        try:
            remote = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            remote = []
        local = {p for p, _ in files}
        owned = [*patterns, *EXPORT_LAYOUT]
        stale = sorted(r for r in remote if r not in local and any(fnmatch.fnmatch(r, pat) for pat in owned))
        ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p, _ in files]
        ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        info = api.create_commit(
            repo_id,
            operations=ops,
            commit_message=commit_message or f"Upload preference dataset from prefdata ({folder.name})",
            repo_type="dataset",
            revision=revision,
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise PrefdataError(
                f"the Hub refused the upload to {repo_id} (HTTP {status}); log in with `hf auth login` or set HF_TOKEN "
                "to a token with write access to that namespace"
            ) from e
        raise PrefdataError(f"pushing to {url} failed: {str(e).splitlines()[0]}") from e
    except OSError as e:  # connection refused, DNS, timeouts (httpx errors are not all OSError)
        raise PrefdataError(f"cannot reach {base}: {e}; check the network or HF_ENDPOINT") from e
    except Exception as e:
        if type(e).__module__.startswith(("httpx", "httpcore")):
            raise PrefdataError(f"cannot reach {base}: {e}; check the network or HF_ENDPOINT") from e
        raise
    return PushResult(repo_id=repo_id, url=url, files=files, dry_run=False, deleted=stale, commit_url=info.commit_url)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
