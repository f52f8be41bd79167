"""The chat-completions reply, as the OpenAI-compatible client reads it: how many bytes a request's reply may have
(`reply_cap`), and its choices (`parse_completion`, into `Choice`s).

The reply JSON is read as plain dicts, so vLLM's extra fields (`token_ids` for the token count) and a malformed 200 (not
JSON, no choices, content not a string) are handled here explicitly: a reply that is not a chat completion is a
ValueError, which the client (openai_client) records as a bad_response and retries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Byte cap of a reply: a fixed allowance for the JSON around the choices, plus per allowed token (max_tokens x n)
# room for a long token JSON-escaped, and for each of its log-probs (vLLM lists the bytes of every top token).
REPLY_BASE_BYTES = 64 * 1024
REPLY_TOKEN_BYTES = 64
REPLY_LOGPROB_BYTES = 128
REPLY_CAP_NO_LIMIT = 16 * 1024 * 1024  # a request without max_tokens


@dataclass
class Choice:
    """One completion of a chat call."""

    text: str
    finish_reason: str | None = None
    n_tokens: int | None = None  # from vLLM's token_ids, or the usage when the call had one choice
    top_logprobs: dict[str, float] | None = None  # the first token's, when asked for


def reply_cap(body: dict[str, Any]) -> int:
    """The most bytes a reply to `body` may have: what max_tokens x n tokens (with their log-probs and token ids, when
    asked for) can take as JSON, with room to spare; REPLY_CAP_NO_LIMIT for a request without max_tokens."""
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens <= 0:
        return REPLY_CAP_NO_LIMIT
    per_token = REPLY_TOKEN_BYTES
    if body.get("logprobs"):
        per_token += REPLY_LOGPROB_BYTES * (1 + int(body.get("top_logprobs") or 0))
    n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    return REPLY_BASE_BYTES + n * max_tokens * per_token


def parse_completion(body: bytes) -> list[Choice]:
    """The choices of a chat completion, in index order; ValueError when the reply is not one."""
    try:
        data = json.loads(body)
        raw_choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        texts = [c["message"]["content"] for c in raw_choices]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"not a chat completion ({type(e).__name__}: {body[:120]!r})") from e
    if not raw_choices:
        raise ValueError(f"not a chat completion (no choices: {body[:120]!r})")
    if any(t is not None and not isinstance(t, str) for t in texts):
        raise ValueError("message content is not a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    out = []
    for c, text in zip(raw_choices, texts, strict=True):
        ids = c.get("token_ids")
        n_tok = len(ids) if isinstance(ids, list) else (usage.get("completion_tokens") if len(raw_choices) == 1 else None)
        out.append(Choice(text=text or "", finish_reason=c.get("finish_reason"), n_tokens=n_tok,
                          top_logprobs=_first_top_logprobs(c)))
    return out


def _first_top_logprobs(choice: dict[str, Any]) -> dict[str, float] | None:
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    if not content:
        return None
    tops: dict[str, float] = {}
    for t in content[0].get("top_logprobs") or []:
        tok, val = t.get("token"), t.get("logprob")
        if isinstance(tok, str) and isinstance(val, int | float):
            tops[tok] = max(tops.get(tok, -1e30), float(val))
    return tops
