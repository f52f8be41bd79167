"""Secrets never leave the machine: one place that decides what looks secret and masks it.

Used where text is written for others to read: run.json (command lines), iterate.json, the dataset card
(configs, commands, warnings) and config checks (a key pasted where a variable name belongs). Masking rules:
- a config key, option or environment variable is secret when its name's last word is a secret word
  (`api_key`, `--hf-token`; not `max_tokens`);
- token-shaped strings of common providers are masked wherever they appear;
- the values of secret-looking environment variables are masked wherever they appear.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

MASK = "***"
# A name is secret when its last word is one of these (api_key, hf_token, --judge-api-key; not max_tokens).
SECRET_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "auth", "authorization", "credential", "credentials", "cookie"}
)
# Options in a command line and their value: --api-key X, --hf-token=X, ...
OPTION = re.compile(r"(--?[A-Za-z][\w-]*)(=|\s+)(?!-)(\S+)")
# Token shapes of common providers (OpenAI, Hugging Face, Anthropic, GitHub, bearer headers).
TOKEN_SHAPES = re.compile(r"\b(?:sk-[\w-]{8,}|hf_[A-Za-z0-9]{8,}|ghp_[A-Za-z0-9]{8,}|xox[bp]-[\w-]{8,})|(?<=Bearer )\S+")
# Prefixes of provider keys, for telling a pasted key from a variable name.
KEY_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "xoxb-", "xoxp-", "AKIA", "r8_", "gsk_")


def secret_name(name: str, any_word: bool = False) -> bool:
    """Whether a config key, option or env variable name holds a secret (judged by its words)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if not words:
        return False
    return any(w in SECRET_WORDS for w in words) if any_word else words[-1] in SECRET_WORDS


def looks_like_secret(value: str) -> bool:
    """A known key prefix, a long run of letters and digits (variable names are words joined by `_`), or a
    long string mixing cases and digits or with a high entropy per character."""
    if value.startswith(KEY_PREFIXES):
        return True
    for part in re.split(r"[_\-.]", value):
        if len(part) >= 20 and any(c.isdigit() for c in part) and any(c.isalpha() for c in part):
            return True
    mixed = any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value)
    if len(value) >= 20 and mixed:
        return True
    counts = Counter(value)
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values()) if value else 0.0
    return len(value) >= 32 and entropy >= 4.0


def command_line() -> str:
    """The command as typed, with the values of secret options (--api-key, --token, ...) masked."""
    args = [Path(sys.argv[0]).name] + sys.argv[1:]
    out: list[str] = []
    mask_next = False
    for a in args:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        if a.startswith("--"):
            name, eq, _ = a[2:].partition("=")
            if secret_name(name):
                if eq:
                    out.append(f"--{name}={MASK}")
                else:
                    out.append(a)
                    mask_next = True
                continue
        out.append(a)
    return " ".join(out)


def scrub(obj: Any) -> Any:
    """A copy of a config with secret-looking keys masked and token-shaped strings removed."""
    if isinstance(obj, dict):
        return {k: (MASK if secret_name(str(k)) and v not in (None, "", False) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return redact(obj)
    return obj


def redact(text: str) -> str:
    """Mask secret option values, token-shaped strings and the values of secret-looking env variables."""
    text = OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}" if secret_name(m.group(1)) else m.group(0), text)
    text = TOKEN_SHAPES.sub(MASK, text)
    for name, value in os.environ.items():
        if secret_name(name, any_word=True) and len(value) >= 8:
            text = text.replace(value, MASK)
    return text


# Where a Hugging Face token can sit in the environment (huggingface_hub reads the first; the others are older names).
HF_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN")
MIN_SECRET_LEN = 6  # shorter values are not masked: replacing "abc" everywhere would garble text, and hide nothing


def known_secrets(*values: str | None) -> list[str]:
    """The secret values this process holds, longest first: the given ones (an API key read from a variable with
    any name), the Hugging Face token (environment or saved login) and secret-named environment variables.

    Text that a server sends back is masked with these before anything records it (see `mask_known`)."""
    found = {v for v in values if v and len(v) >= MIN_SECRET_LEN}
    found |= {v for n in HF_TOKEN_VARS if len(v := os.environ.get(n, "")) >= MIN_SECRET_LEN}
    found |= {v for n, v in os.environ.items() if secret_name(n, any_word=True) and len(v) >= 8}
    try:
        from huggingface_hub import get_token

        saved = get_token()
    except Exception:  # noqa: BLE001 - no hub, unreadable token file: there is no saved token to mask
        saved = None
    if saved and len(saved) >= MIN_SECRET_LEN:
        found.add(saved)
    return sorted(found, key=len, reverse=True)


def mask_known(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of each secret (see `known_secrets`) replaced by the mask."""
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


def byte_forms(secrets: list[str]) -> list[bytes]:
    """Each secret as it can appear in a reply's bytes: raw and JSON-escaped, longest first (for `mask_bytes`)."""
    forms = {f for s in secrets for f in (s, json.dumps(s)[1:-1], json.dumps(s, ensure_ascii=False)[1:-1])}
    return sorted((f.encode() for f in forms), key=len, reverse=True)


def mask_bytes(data: bytes, forms: list[bytes]) -> bytes:
    """`data` with every occurrence of each secret's byte form (see `byte_forms`) replaced by the mask."""
    for s in forms:
        if s in data:
            data = data.replace(s, MASK.encode())
    return data
