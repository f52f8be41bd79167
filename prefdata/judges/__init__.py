"""Judges: a reward model (pointwise scores) or an LLM comparing two candidates (pairwise verdicts).

All of them speak the types in `verdict.py`: a verdict names a candidate id, a tie, or a failure.
"""

from prefdata.judges.verdict import (
    Candidate,
    PairJudge,
    PairRequest,
    PointwiseJudge,
    ScoreRequest,
    ScoreResult,
    Verdict,
    VerdictRule,
)

__all__ = [
    "Candidate", "PairJudge", "PairRequest", "PointwiseJudge", "ScoreRequest", "ScoreResult", "Verdict", "VerdictRule",
]
