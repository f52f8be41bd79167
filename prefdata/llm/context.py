"""Token counting against a model's context, once for sampling and judging, and the `too_long` outcome.

A call whose prompt tokens plus its reply limit do not fit the context is never sent: it fails alone as
`too_long` (a judge records it, generate skips the prompt), so it can never abort the batch it would be part of.
Plain text (an answer, an instruction) is counted once here too (`text_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TOO_LONG = "too_long"  # error prefix (and ChatOut.kind) of a call whose prompt does not fit the model's context


def chat_token_ids(tokenizer: Any, conv: list[dict[str, str]]) -> list[int]:
    """The prompt's token ids as the model sees them: its chat template with the generation prompt."""
    ids = tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def text_tokens(tokenizer: Any, text: str) -> int:
    """How many tokens plain text is, without a chat template or special tokens (an answer's length)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def too_long_reason(n_prompt: int, max_tokens: int, max_len: int) -> str | None:
    """None when `n_prompt` tokens and a reply of up to `max_tokens` fit `max_len`; else the too_long error."""
    if n_prompt + max_tokens <= max_len:
        return None
    return (f"{TOO_LONG}: the judge prompt has {n_prompt} tokens and the reply up to {max_tokens}, more than the "
            f"judge's context of {max_len}")


@dataclass
class TokenBudget:
    """A model's context: its tokenizer (with its chat template) and its context length in tokens."""

    tokenizer: Any
    max_len: int

    def count(self, conv: list[dict[str, str]]) -> int:
        return len(chat_token_ids(self.tokenizer, conv))

    def too_long(self, conv: list[dict[str, str]], max_tokens: int) -> str | None:
        return too_long_reason(self.count(conv), max_tokens, self.max_len)


def too_long_reasons(convs: Sequence[list[dict[str, str]]], budget: TokenBudget | None,
                     rooms: Sequence[int]) -> list[str | None]:  # fmt: skip
    """Per conversation, its too_long error or None; `rooms`: the reply room each needs. A conversation sent under
    several samplings (the same list object) is counted once."""
    if budget is None:
        return [None] * len(convs)
    counted: dict[int, int] = {}
    reasons = []
    for c, room in zip(convs, rooms, strict=True):
        if id(c) not in counted:
            counted[id(c)] = budget.count(c)
        reasons.append(too_long_reason(counted[id(c)], room, budget.max_len))
    return reasons
