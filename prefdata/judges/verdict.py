"""The one verdict type every judge backend returns, and the judge interfaces.

A judge sees two candidates in a given order (the one shown first is `first`). Inside the judge the
answer is a slot ("A"/"B"); before it leaves the judge it is turned into the preferred candidate's *id*,
a tie, or a failure with its reason. Nothing outside a judge ever handles a slot, so a swapped order
can never be restored wrongly (the open-instruct / TRL bugs in anchors.md section 7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

VerdictKind = Literal["a", "b", "tie", "fail"]

# Position-bias policies: which orders a pair is shown in (`prefdata.rank.ranking.call_orders` applies them). Here,
# not in rank, so the judge's config can check the option without importing a stage.
POLICIES = ("both", "random", "fixed")


@dataclass(frozen=True)
class Candidate:
    id: str
    text: str


@dataclass(frozen=True)
class PairRequest:
    """One judge call: `first` is shown first (slot A), `second` second (slot B)."""

    prompt_id: str
    messages: tuple[tuple[str, str], ...]  # (role, content) of the prompt conversation
    first: Candidate
    second: Candidate
    reference: str | None = None


@dataclass
class Verdict:
    """What a pairwise judge call produced.

    verdict is relative to the ids: "a" means first.id is preferred, "b" means second.id. winner_id is the
    preferred candidate's id (None for a tie or a failure). score is e.g. P(first preferred) in logprob mode.
    """

    a_id: str
    b_id: str
    verdict: VerdictKind
    winner_id: str | None
    score: float | None = None
    raw: str = ""
    error: str | None = None
    latency_s: float = 0.0
    attempts: int = 1
    repaired: bool = False

    @classmethod
    def from_slot(cls, req: PairRequest, slot: str | None, **kw: object) -> Verdict:
        """Map a parsed slot ("a", "b", "tie" or None = failure) to candidate ids; the only place slots end."""
        if slot == "a":
            return cls(req.first.id, req.second.id, "a", req.first.id, **kw)  # type: ignore[arg-type]
        if slot == "b":
            return cls(req.first.id, req.second.id, "b", req.second.id, **kw)  # type: ignore[arg-type]
        if slot == "tie":
            return cls(req.first.id, req.second.id, "tie", None, **kw)  # type: ignore[arg-type]
        kw.setdefault("error", "no verdict")
        return cls(req.first.id, req.second.id, "fail", None, **kw)  # type: ignore[arg-type]


@dataclass
class ScoreResult:
    """What a pointwise (reward-model) judge produced for one candidate."""

    candidate_id: str
    score: float | None
    n_tokens: int = 0
    truncated: bool = False
    error: str | None = None
    latency_s: float = 0.0


@dataclass(frozen=True)
class ScoreRequest:
    prompt_id: str
    messages: tuple[tuple[str, str], ...]
    candidate: Candidate
    reference: str | None = None  # the prompt's reference answer (verifier judges need it)


@runtime_checkable
class PairJudge(Protocol):
    """A pairwise judge: one Verdict per request, in request order. `config()` feeds the judge hash."""

    def judge(self, requests: list[PairRequest]) -> list[Verdict]: ...

    def config(self) -> dict[str, object]: ...


@runtime_checkable
class PointwiseJudge(Protocol):
    """A scoring judge (reward model): one ScoreResult per request, in request order."""

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]: ...

    def config(self) -> dict[str, object]: ...


@dataclass
class VerdictRule:
    """How to read a verdict out of judge text.

    The rule: find every match of `pattern` (its first group is a label); map labels to slots via `labels`.
    No match, or matches that map to different slots, is a parse failure (arena-hard's rule: an answer that
    says both "[[A]]" and "[[B]]" is not trusted). Matching is case-sensitive.
    """

    pattern: str
    labels: dict[str, str] = field(default_factory=dict)  # label -> "a" | "b" | "tie"

    def parse(self, text: str) -> tuple[str | None, str | None]:
        """(slot, error): slot is "a"/"b"/"tie", or None with the reason."""
        found = [m.group(1) for m in re.finditer(self.pattern, text or "")]
        slots = {self.labels[f] for f in found if f in self.labels}
        if not slots:
            return None, "parse: no verdict found"
        if len(slots) > 1:
            return None, f"parse: conflicting verdicts {sorted(slots)}"
        return slots.pop(), None
