"""Judges: a reward model (pointwise scores), a verifier, or an LLM comparing two candidates (pairwise verdicts).

All of them speak the types in `verdict.py`: a verdict names a candidate id, a tie, or a failure. `config.py`
declares every judge option once (JudgeConfig); `build.py` turns one into a judge.
"""
