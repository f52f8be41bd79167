"""push_export against a fake Hub on 127.0.0.1 that answers the HTTP calls huggingface_hub makes for an upload.

The calls (huggingface_hub 1.x/2.x, xet disabled so the plain LFS path is taken):
POST /api/repos/create, GET /api/datasets/{repo}/tree/{rev} (listing, for stale data files),
POST /api/validate-yaml (README metadata), POST /api/datasets/{repo}/preupload/{rev} (regular or LFS per file),
POST /datasets/{repo}.git/info/lfs/objects/batch, PUT <upload href> (+ POST <verify href>),
POST /api/datasets/{repo}/commit/{rev} (NDJSON: header, file (base64), lfsFile (sha256), deletedFile).
The server keeps the committed files; the test compares them byte for byte with the export folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from prefdata.errors import PrefdataError
from prefdata.export import ExportConfig, export_run
from prefdata.export.push import push_export
from tests.helpers import four, make_ranked_run

TOKEN = "hf_FakeTokenForTheLocalServer123"
LFS_SUFFIXES = (".parquet", ".png", ".arrow")


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.lfs: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.auth: dict[str, set[str | None]] = {}
        self.lock = threading.Lock()


def _handler(hub: FakeHub, base: list[str]):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # keep test output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, code: int, obj: object = None) -> None:
            raw = b"" if obj is None else json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _route(self, method: str) -> None:
            path = urlparse(self.path).path
            body = self._body() if method in ("POST", "PUT") else b""
            with hub.lock:
                hub.calls.append((method, path))
                hub.auth.setdefault(path.split("/")[1], set()).add(self.headers.get("Authorization"))
            parts = path.strip("/").split("/")
            if method == "POST" and path == "/api/repos/create":
                req = json.loads(body)
                repo = f"{req['organization']}/{req['name']}"
                hub.repos[repo] = req
                hub.files.setdefault(repo, {})
                return self._send(200, {"url": f"{base[0]}/datasets/{repo}", "name": repo})
            if method == "POST" and path == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "datasets"] and len(parts) >= 6:
                repo = f"{parts[2]}/{parts[3]}"
                if repo not in hub.files:
                    return self._send(404, {"error": "Repository not found"})
                if method == "GET" and parts[4] == "tree":
                    files = hub.files[repo]
                    listing = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                               for p, b in sorted(files.items())]  # fmt: skip
                    return self._send(200, listing)
                if method == "POST" and parts[4] == "preupload":
                    req = json.loads(body)
                    modes = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                              "shouldIgnore": False, "oid": None} for f in req["files"]]  # fmt: skip
                    return self._send(200, {"files": modes, "commitOid": "0" * 40})
                if method == "POST" and parts[4] == "commit":
                    return self._commit(repo, body)
            if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
                req = json.loads(body)
                objects = [{"oid": o["oid"], "size": o["size"],
                            "actions": {"upload": {"href": f"{base[0]}/lfs-upload/{o['oid']}"},
                                        "verify": {"href": f"{base[0]}/lfs-verify"}}} for o in req["objects"]]  # fmt: skip
                return self._send(200, {"transfer": "basic", "objects": objects})
            if method == "PUT" and parts[0] == "lfs-upload":
                if hashlib.sha256(body).hexdigest() != parts[1]:
                    return self._send(400, {"error": "sha256 mismatch"})
                hub.lfs[parts[1]] = body
                return self._send(200, {})
            if method == "POST" and path == "/lfs-verify":
                req = json.loads(body)
                return self._send(200 if req["oid"] in hub.lfs else 404, {})
            return self._send(404, {"error": f"fake hub does not know {method} {path}"})

        def _commit(self, repo: str, body: bytes) -> None:
            files = dict(hub.files[repo])
            for line in body.decode().splitlines():
                item = json.loads(line)
                key, val = item["key"], item["value"]
                if key == "file":
                    files[val["path"]] = base64.b64decode(val["content"])
                elif key == "lfsFile":
                    if val["oid"] not in hub.lfs:
                        return self._send(400, {"error": f"LFS object {val['oid']} was never uploaded"})
                    files[val["path"]] = hub.lfs[val["oid"]]
                elif key == "deletedFile":
                    files.pop(val["path"])
            hub.files[repo] = files
            self._send(200, {"commitUrl": f"{base[0]}/datasets/{repo}/commit/abc", "commitOid": "a" * 40})

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

    return H


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    hub = FakeHub()
    base: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub, base))
    base.append(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # conftest sets HF_HUB_OFFLINE=1 for the whole suite; this test is the one place that talks HTTP (to itself).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the LFS path; xet needs a CAS server
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    try:
        yield hub, base[0]
    finally:
        server.shutdown()
        server.server_close()


def _folder_files(folder: Path) -> dict[str, bytes]:
    """The export's files as push sees them: hidden ones (the .prefdata-export.json manifest) stay local."""
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    return {rel: p.read_bytes() for rel, p in files.items() if not any(s.startswith(".") for s in rel.split("/"))}


def test_push_uploads_exactly_the_export(tmp_path, fake_hub):
    hub, endpoint = fake_hub
    run = make_ranked_run(tmp_path / "run", [(f"q{i}", four(f"{i} ")) for i in range(6)])
    out = tmp_path / "out"
    export_run(run, ExportConfig(out=str(out), test_size=0.5))
    dry = push_export(out, "me/prefs", dry_run=True, endpoint=endpoint)
    assert hub.calls == [] and dry.dry_run

    res = push_export(out, "me/prefs", private=True, endpoint=endpoint)
    assert hub.files["me/prefs"] == _folder_files(out)
    assert sorted(p for p, _ in res.files) == sorted(p for p, _ in dry.files) == sorted(_folder_files(out))
    assert hub.repos["me/prefs"]["type"] == "dataset" and hub.repos["me/prefs"].get("private", True)
    # the Hub API calls carry the token; the storage PUT (a presigned URL on the real Hub) gets none
    assert hub.auth.pop("lfs-upload") == {None}
    assert set.union(*hub.auth.values()) == {f"Bearer {TOKEN}"}
    methods = {(m, p.split("/")[-2] if "lfs-upload" in p else p.rsplit("/", 1)[-1]) for m, p in hub.calls}
    assert ("PUT", "lfs-upload") in methods and ("POST", "batch") in methods  # parquet and png went through LFS
    # the token is used, never written
    for f in list(out.rglob("*")) + list(run.path.rglob("*")):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes()

    # a smaller re-export pushed to the same repo: stale data files are deleted, so the Hub serves the same rows
    export_run(run, ExportConfig(out=str(out), overwrite=True))
    res = push_export(out, "me/prefs", endpoint=endpoint)
    assert hub.files["me/prefs"] == _folder_files(out)
    assert res.deleted == ["data/test-00000-of-00001.parquet"]

    # what the Hub now holds, loaded the way the Hub's viewer/`load_dataset(repo)` reads it, equals the folder
    import datasets

    served = tmp_path / "served"
    for rel, data in hub.files["me/prefs"].items():
        (served / rel).parent.mkdir(parents=True, exist_ok=True)
        (served / rel).write_bytes(data)
    local = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "c1"))
    remote = datasets.load_dataset(str(served), cache_dir=str(tmp_path / "c2"))
    assert {k: v.to_list() for k, v in local.items()} == {k: v.to_list() for k, v in remote.items()}
    assert list(local) == ["train"] and len(local["train"]) == 6


def test_push_reports_auth_and_connection_errors(tmp_path, fake_hub, monkeypatch):
    hub, endpoint = fake_hub
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    out = tmp_path / "out"
    export_run(run, ExportConfig(out=str(out)))
    with pytest.raises(PrefdataError, match="cannot reach http://127.0.0.1:9"):
        push_export(out, "me/prefs", endpoint="http://127.0.0.1:9")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PrefdataError, match="HF_HUB_OFFLINE is set"):
        push_export(out, "me/prefs", endpoint=endpoint)
