"""A server that echoes the request's headers (the Authorization header with the API key) in its error bodies and
in its answers cannot get a key or the Hugging Face token into anything prefdata writes: every file of the run, its
export and its logs (parquet read back as well as scanned as bytes), and the terminal output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl

from prefdata.llm.openai_client import ChatClient
from tests.helpers import FaultServer, completion, write_jsonl

SAMPLER_KEY = "sk-proj-" + "Zq8Xw2Lm5Np7Rt4Vb6Hc9Jd1"
# read through a custom --api-key-env whose name is not secret-looking: masking must not rely on the name
JUDGE_KEY = "judge-" + "c0ffee42deadbeef77aa"
HF_TOKEN = "hf_" + "QwErTyUiOpAsDfGhJkLzXcVbNm"
SECRETS = (SAMPLER_KEY, JUDGE_KEY, HF_TOKEN)


class EchoServer(FaultServer):
    """Answers every chat request with the request's headers (and the HF token, as a server that learnt it would):
    a 500 with them in its body first, then a reply that quotes them; the first prompt's judge calls get only 500s."""

    def reply(self, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:
        echo = f"token {HF_TOKEN}, your headers: {json.dumps(headers)}"
        key = json.dumps(body["messages"])
        with self.lock:
            self.attempts[key] += 1
            n = self.attempts[key]
        # every judge call of the first prompt fails (its ranking stays incomplete: rank exits 3), the others answer
        # on the retry: chosen by the question, not by a hash of a body that holds the server's port (a random
        # quarter of calls then left no prompt complete in about one run in ten, and export found nothing)
        always_fail = "Question 0?" in key and "n" not in body
        if n == 1 or always_fail:
            return 500, json.dumps({"error": {"message": f"cannot serve this; {echo}"}}).encode()
        if "n" in body:  # a sampling request from generate
            choices = [{"index": i, "message": {"role": "assistant", "content": f"answer q={i}; {echo}"},
                        "finish_reason": "stop"} for i in range(body["n"])]
            return 200, json.dumps({"id": "x", "object": "chat.completion", "choices": choices}).encode()
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        qa, qb = (int(x) for x in re.findall(r"q=(\d+)", user)[:2])
        return 200, completion(("[[A]]" if qa > qb else "[[B]]" if qb > qa else "[[C]]") + f" ({echo})")


def _scan(root: Path, outputs: list[str]) -> list[str]:
    """Where a secret was found: files as bytes, parquet files also decoded (their pages are compressed)."""
    found = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        texts = [p.read_bytes().decode("utf-8", "replace")]
        if p.suffix == ".parquet":
            texts.append(pl.read_parquet(p).write_ndjson())
        found += [f"{p.relative_to(root)}: {s[:6]}" for t in texts for s in SECRETS if s in t]
    return found + [f"output: {s[:6]}" for t in outputs for s in SECRETS if s in t]


def test_echoed_keys_and_hf_token_are_written_nowhere(tmp_path):
    server = EchoServer()
    env = {**os.environ, "OPENAI_API_KEY": SAMPLER_KEY, "MY_JUDGE": JUDGE_KEY, "HF_TOKEN": HF_TOKEN}
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(4)])
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "prefdata.cli"]
    steps = [
        [*cli, "generate", str(prompts), "--run", str(run), "--backend", "openai", "--base-url", server.url,
         "--model", "fake-judge", "-n", "3", "--max-tokens", "32", "--quiet"],
        [*cli, "rank", "--run", str(run), "--base-url", server.url, "--api-key-env", "MY_JUDGE", "--max-retries", "1",
         "--backoff-s", "0", "--position-bias", "fixed", "--no-progress"],
        [*cli, "export", "--run", str(run)],
    ]
    outputs: list[str] = []
    try:
        for cmd, want in zip(steps, (0, 3, 0), strict=True):
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            outputs += [p.stdout, p.stderr]
            assert p.returncode == want, p.stderr
    finally:
        server.close()
    assert list(run.glob("logs/*.log")) and list(run.glob("exports/*/README.md"))
    assert _scan(tmp_path, outputs) == []
    # the server did echo them: what was recorded in their place is the mask
    jh = next(iter(json.loads((run / "run.json").read_text())["stages"]["rank"]))
    j = pl.read_parquet(run / "judgments" / jh)
    assert j["raw"].str.contains("Bearer \\*\\*\\*", literal=False).any()
    assert j["error"].str.contains("Bearer \\*\\*\\*").any() and j["error"].str.contains("token \\*\\*\\*,").any()
    cands = pl.read_parquet(run / "candidates")
    assert cands["text"].str.contains("Bearer \\*\\*\\*").all()


def test_client_masks_a_key_split_by_truncation_and_json_escapes(monkeypatch):
    """An error body is cut to 200 characters: the key is masked before the cut, so no prefix of it is left; a
    key written with JSON escapes is masked in the parsed text too."""
    key = "sk-" + "Ab12Cd34Ef56Gh78Ij90Kl"
    monkeypatch.setenv("CUSTOM", key)

    class Server(FaultServer):
        def reply(self, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:
            if body["messages"][0]["content"] == "cut":
                auth = next(v for k, v in headers.items() if k.lower() == "authorization")
                return 400, ("x" * 190 + auth).encode()
            escaped = "".join(f"\\u{ord(c):04x}" for c in key)
            return 200, completion("PLACEHOLDER").replace(b"PLACEHOLDER", escaped.encode())

    server = Server()
    try:
        client = ChatClient([server.url], "fake-judge", api_key_env="CUSTOM", max_retries=0)
        cut, escaped = client.chat([{"messages": [{"role": "user", "content": c}], "max_tokens": 8} for c in ("cut", "x")])
    finally:
        server.close()
    assert cut.error is not None and key[:6] not in cut.error and "Bearer ***" in cut.error
    assert escaped.choices[0].text == "***"
