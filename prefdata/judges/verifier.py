"""Verifier judges: a program scores each completion against the prompt's reference answer.

This is how preference data is built for math and code: sample, check each answer, pair a correct one with
a wrong one. A verifier is a pointwise judge (like a reward model), so rank sorts by its scores, and equal
scores tie: two correct answers never become a pair.

Judges, as named by `--judge`:
- `verify:number`: 1.0 when the last number in the completion equals the last number in the reference,
  else 0.0. Numbers may carry thousands commas ("1,234"), a sign ("-5", "−5"), decimals ("3.50" equals
  "3.5"), and trailing text ("42." or "42 apples"). A completion without a number scores 0.0 (it gave no
  answer); a reference without a number cannot be judged (None, recorded as a failure).
- `verify:exact`: 1.0 when the normalised completion equals the normalised reference (case, surrounding
  whitespace and quotes, runs of spaces, a final period/!/? ignored), else 0.0.
- `python:FILE.py:FUNCTION` or `python:package.module:FUNCTION`: any function
  `f(messages, completion, reference) -> float | None` (messages: the prompt as a list of {role, content};
  None means "cannot judge"). A function that raises is recorded as a failure with its message; the run
  goes on.

A prompt without a reference is not scored at all; rank counts it as `prompts_without_reference`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import re
import sys
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.judges.verdict import ScoreRequest, ScoreResult

PREFIXES = ("verify:", "python:")
BUILTINS = ("number", "exact")

# A number: digits with optional thousands commas and decimals, or a bare decimal like ".5"; never the tail of
# another number. A sign counts only where it cannot be a binary minus ("-5", "= −5", but not the "-" in "10-3").
_NUMBER = re.compile(r"(?<![\d.])((?<![\w.])[-−])?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?!\d)")

VerifyFn = Callable[[list[dict[str, str]], str, str], Any]


def is_verifier(judge: str) -> bool:
    return judge.startswith(PREFIXES)


def last_number(text: str) -> Decimal | None:
    """The last number in `text` as an exact Decimal (commas dropped, sign kept); None when there is none."""
    found = list(_NUMBER.finditer(text or ""))
    if not found:
        return None
    sign, digits = found[-1].group(1), found[-1].group(2).replace(",", "")
    try:
        value = Decimal(digits)
    except InvalidOperation:
        return None
    return -value if sign in ("-", "−") else value


def verify_number(messages: list[dict[str, str]], completion: str, reference: str) -> float | None:
    ref = last_number(reference)
    if ref is None:
        return None
    got = last_number(completion)
    return 1.0 if got is not None and got == ref else 0.0


def normalise(text: str) -> str:
    t = " ".join((text or "").split()).strip().lower()
    t = t.strip("\"'`“”‘’")
    return t.rstrip(".!?").strip()


def verify_exact(messages: list[dict[str, str]], completion: str, reference: str) -> float | None:
    return 1.0 if normalise(completion) == normalise(reference) else 0.0


class VerifierJudge:
    """A pointwise judge whose score is a function of (prompt messages, completion, reference)."""

    needs_reference = True

    def __init__(self, spec: str, fn: VerifyFn, source_sha256: str | None = None) -> None:
        self.spec = spec
        self.fn = fn
        self.source_sha256 = source_sha256

    def config(self) -> dict[str, object]:
        return {"kind": "verifier", "name": self.spec, "source_sha256": self.source_sha256}

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return [self._one(r) for r in requests]

    def _one(self, req: ScoreRequest) -> ScoreResult:
        cid = req.candidate.id
        if req.reference is None:
            return ScoreResult(cid, None, error="no reference answer for this prompt")
        msgs = [{"role": r, "content": c} for r, c in req.messages]
        t0 = time.monotonic()
        try:
            value = self.fn(msgs, req.candidate.text, req.reference)
        except Exception as e:  # noqa: BLE001 - a user function's error is a recorded failure, never a crash
            return ScoreResult(cid, None, error=f"{type(e).__name__}: {e}"[:500], latency_s=time.monotonic() - t0)
        lat = time.monotonic() - t0
        if value is None:
            return ScoreResult(cid, None, error="cannot judge (the verifier returned None)", latency_s=lat)
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or isinstance(value, complex):
            return ScoreResult(cid, None, error=f"the verifier returned {type(value).__name__}, expected a float or None",
                               latency_s=lat)
        if math.isnan(float(value)) or math.isinf(float(value)):
            return ScoreResult(cid, None, error=f"the verifier returned {value}", latency_s=lat)
        return ScoreResult(cid, float(value), latency_s=lat)


def build_verifier(spec: str) -> VerifierJudge:
    """`verify:number`, `verify:exact`, `python:FILE.py:FUNCTION` or `python:package.module:FUNCTION`."""
    if spec.startswith("verify:"):
        name = spec.removeprefix("verify:")
        fns: dict[str, VerifyFn] = {"number": verify_number, "exact": verify_exact}
        if name not in fns:
            raise PrefdataError(f"unknown verifier {spec!r}; use verify:number, verify:exact or python:FILE.py:FUNCTION")
        return VerifierJudge(spec, fns[name])
    target, sep, func = spec.removeprefix("python:").rpartition(":")
    if not sep or not target or not func:
        raise PrefdataError(f"--judge {spec!r}: write python:FILE.py:FUNCTION or python:package.module:FUNCTION")
    if target.endswith(".py") or "/" in target or Path(target).is_file():
        path = Path(target).expanduser()
        if not path.is_file():
            raise PrefdataError(f"--judge {spec!r}: file {path} does not exist")
        source = path.read_bytes()
        mod_name = f"prefdata_user_verifier_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        try:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            loader_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - any error in the user's file is one error line
            sys.modules.pop(mod_name, None)
            raise PrefdataError(f"--judge {spec!r}: {path} could not be loaded ({type(e).__name__}: {e})") from e
        label = f"python:{path.name}:{func}"
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:  # noqa: BLE001
            raise PrefdataError(f"--judge {spec!r}: module {target} could not be imported ({type(e).__name__}: {e})") from e
        file = getattr(module, "__file__", None)
        source = Path(file).read_bytes() if file and Path(file).is_file() else target.encode()
        label = f"python:{target}:{func}"
    fn = getattr(module, func, None)
    if fn is None:
        raise PrefdataError(f"--judge {spec!r}: {target} has no function {func!r}")
    if not callable(fn):
        raise PrefdataError(f"--judge {spec!r}: {target}.{func} is not a function")
    return VerifierJudge(label, fn, hashlib.sha256(source).hexdigest()[:16])


__all__ = ["VerifierJudge", "build_verifier", "is_verifier", "last_number", "normalise", "verify_exact", "verify_number"]
