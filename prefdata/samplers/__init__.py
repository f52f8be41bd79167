"""Samplers turn a batch of prompts into completions. One class per backend, one shared shape.

A sampler gets a batch of conversations and a plan (which kinds of candidates to draw, how many, at which
temperature) and returns, per conversation and per plan entry, a list of `Completion`s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SampleSpec:
    """One kind of candidate to draw for every prompt: e.g. 4 samples at T=0.8, or 1 greedy."""

    kind: str
    n: int
    temperature: float


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    n_tokens: int | None


def normalize_finish(reason: str | None) -> str:
    """vLLM and OpenAI say 'stop'/'length'; treat anything that did not hit the token cap as 'stop'."""
    return "length" if reason == "length" else "stop"
