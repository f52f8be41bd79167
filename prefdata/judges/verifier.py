"""Verifier judges: a program scores each completion against the prompt's reference answer.

This is how preference data is built for math and code: sample, check each answer, pair a correct one with
a wrong one. A verifier is a pointwise judge (like a reward model), so rank sorts by its scores, and equal
scores tie: two correct answers never become a pair.

Judges, as named by `--judge` (docs/verifiers.md has the table of examples):
- `verify:number`: 1.0 when the completion's final answer is the reference's number, by value, else 0.0. The final
  answer is, first found: the `\\boxed{}` answer (several that differ: 0.0), the number after `####` at the end of a
  line, the number right after the last "answer is" / "answer:" / "result is", the number after a final `=` that
  no other number follows, else the last number. A number may carry a sign, thousands commas, decimals, a `$`, a
  unit or a `%` after it; `3/2` and `\\frac{3}{2}` are fractions. A completion without a number scores 0.0; a
  reference without one cannot be judged (None, recorded as a failure).
- `verify:math`: the same final answer, read and compared by Hugging Face's math-verify (LaTeX, fractions,
  roots, powers, sets and intervals, compared symbolically), for answers that are expressions, not just numbers.
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
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.judges.verdict import ScoreRequest, ScoreResult

PREFIXES = ("verify:", "python:")
BUILTINS = ("number", "math", "exact")
# The behaviour version of each built-in: it goes into the judge descriptor (config() -> judge hash), so scores
# cached by an older verify:number are never reused after its rules change. Bump it with any change of verdicts.
BUILTIN_VERSIONS: dict[str, str | None] = {"number": "2", "math": "1", "exact": None}

# A number: digits with optional thousands commas and decimals, or a bare decimal like ".5"; never the tail of
# another number. A sign counts only where it cannot be a binary minus ("-5", "= −5", but not the "-" in "10-3").
_NUMBER = re.compile(r"(?<![\d.])((?<![\w.])[-−])?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?!\d)")
# A value: a number as above, or a fraction of two ("3/2", "-1/2"; "1/2/2020" is not one), then an optional "%".
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_VALUE = re.compile(rf"(?<![\d.])((?<![\w.])[-−])?({_DIGITS})(?:/(\d+(?:\.\d+)?)(?![\d/]))?(?!\d)(\s*%)?")
# What may stand between an answer marker and its number: spaces, "$", markdown bold, "\(", "(".
_LEAD = re.compile(r"[\s$*_(\[]*(?:\\\(|\\\[)?[\s$*_(\[]*")
# "answer is", "Answer:", "**Answer:**", "the final result is", "answer would be", "answer = ".
_ANCHOR = re.compile(r"\b(?:answer|result)s?\s*(?:\*\*)?\s*(?:is|was|would\s+be|will\s+be|equals|:|=)(?:\s*:)?(?:\*\*)?"
                     r"(?:\s+(?:therefore|thus|then|simply|just|exactly))?", re.IGNORECASE)
# GSM8K's final-answer line: "#### 72" (a markdown heading such as "#### Step 1" is not one).
_HASHES = re.compile(r"^[ \t]*####[ \t]*(?=[$\d.\-−\\])", re.MULTILINE)
# A number is a term of an expression, not an answer, with an operator between it and another number.
# (A "-" with no number before it is a sign or a bullet, not an operator.)
_OPERATOR_BEFORE = re.compile(r"(?:[\w)}]\s*\^|[\d)]\*\*|[\d)}]\s*(?:[-+*/×÷·]|\\times|\\cdot|\\div))\s*[({]?\s*$")
_OPERATOR_AFTER = re.compile(r"\s*(?:\^|(?:\*\*|[-+*/×÷·]|\\times|\\cdot|\\div)\s*[-−(]?\s*\.?\d)")  # not markdown "**42**"
_CLOSING_REMARK = re.compile(r"\s*\([^()]*\)[\s.!]*$")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*(\{|\s)")
_AFTER_ANSWER = re.compile(r"[.;!?](?=\s|$)|\n|,\s+(?=[A-Za-z]{2})")  # where an answer sentence ends
_THOUSANDS_SPACE = re.compile(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3}(?!\d))")  # 1{,}024 and 1\,024
# LaTeX spellings read as plain text before looking for numbers.
_LATEX_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(a), b) for a, b in (
    (r"\\[dt]?frac\s*\{\s*([-−]?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}", r"\1/\2"),  # \frac{1}{2} -> 1/2
    (r"\\[dt]?frac\s*(\d)(\d)", r"\1/\2"),  # \frac12
    (r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r" \1 "),
    (_THOUSANDS_SPACE.pattern, ","),
    (r"\\%", "%"), (r"\\\$", "$"), (r"\\[,;:! ]", " "), (r"\\(?:left|right)\b", ""),
))

VerifyFn = Callable[[list[dict[str, str]], str, str], Any]


@dataclass(frozen=True)
class Answer:
    """A completion's final answer as verify:number reads it: the value (None: no readable number) and the rule
    that found it (boxed, ####, anchor, equals, last, none), so a test or a user can see why it scored so."""

    value: Fraction | None
    percent: bool
    rule: str


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


def _plain(text: str) -> str:
    """`text` with the LaTeX spellings of numbers made plain (\\frac{1}{2} -> 1/2, \\$ -> $, \\text{} dropped)."""
    for pattern, repl in _LATEX_REWRITES:
        text = pattern.sub(repl, text)
    return text


def _value(m: re.Match[str]) -> tuple[Fraction, bool] | None:
    """The exact value of one _VALUE match (None for a zero denominator), and whether it had a percent sign."""
    num = Fraction(Decimal(m.group(2).replace(",", "")))
    if m.group(3) is not None:
        den = Fraction(Decimal(m.group(3)))
        if den == 0:
            return None
        num /= den
    return (-num if m.group(1) else num), m.group(4) is not None


def _value_at(text: str, pos: int) -> re.Match[str] | None:
    """The value that starts at `pos`, after spaces, "$", bold or "\\(" only; None when words come first."""
    lead = _LEAD.match(text, pos)
    return _VALUE.match(text, lead.end() if lead else pos)


def boxed_contents(text: str) -> list[str]:
    """The contents of every \\boxed{...} (and \\fbox{...}), braces matched, in order; `\\boxed 5` gives "5"."""
    out: list[str] = []
    for m in _BOX.finditer(text):
        if m.group(1) != "{":
            word = text[m.end():].split(maxsplit=1)
            out.append(word[0].rstrip(".$") if word else "")
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end():i - 1] if depth == 0 else text[m.end():])
    return out


def _box_value(content: str) -> tuple[Fraction, bool] | None:
    """One boxed answer's number: the only number in it, or the one after its last "=" ("x = 5", "2+3=5")."""
    plain = _plain(content)
    found = list(_VALUE.finditer(plain))
    if len(found) == 1:
        return _value(found[0])
    if "=" in plain:
        tail = list(_VALUE.finditer(plain.rsplit("=", 1)[1]))
        if len(tail) == 1:
            return _value(tail[0])
    return None  # \boxed{2^{10}}, \boxed{3, 4}: not one plain number


def _in_expression(text: str, m: re.Match[str]) -> bool:
    """Whether the number matched is one term of an expression ("2^{10}", "58 + 25", "3 / 4"), not an answer."""
    return bool(_OPERATOR_BEFORE.search(text, 0, m.start()) or _OPERATOR_AFTER.match(text, m.end()))


def _stated(text: str, pos: int) -> tuple[str, Answer | None]:
    """The number an answer marker ending at `pos` states: the one right after it, or, when that starts an
    expression ("the answer is 58 + 25 = 83"), the one after the sentence's last "="; ("", None): no number there."""
    m = _value_at(text, pos)
    if m is None:
        return "", None
    if re.match(r"\s*(?:or|/)\s*[-−$]?\s*\d", text[m.end():]):
        return "hedged", None  # "the answer is 3 or 4"
    if _in_expression(text, m):
        end = _AFTER_ANSWER.search(text, m.end())
        sentence = text[m.start():end.start() if end else len(text)]
        eq = sentence.rfind("=")
        m = _value_at(sentence, eq + 1) if eq >= 0 else None
        if m is None or _in_expression(sentence, m):
            return "expression", None
        text = sentence
    v = _value(m)
    return ("number", Answer(v[0], v[1], "")) if v else ("zero denominator", None)


def final_answer(text: str) -> Answer:
    """The final answer of `text` by the first rule that applies (module docstring and docs/verifiers.md)."""
    text = text or ""
    boxes = boxed_contents(text)
    if boxes:
        values = [_box_value(b) for b in boxes]
        if any(v is None for v in values) or len(set(values)) > 1:
            return Answer(None, False, "boxed")  # unreadable, or several boxed answers that differ: a hedge
        return Answer(values[0][0], values[0][1], "boxed")  # type: ignore[index]
    plain = _plain(text)
    for rule, markers in (("####", _HASHES), ("anchor", _ANCHOR)):
        for marker in reversed(list(markers.finditer(plain))):
            what, got = _stated(plain, marker.end())
            if what:  # the last marker followed by a number decides, right or wrong
                return Answer(got.value, got.percent, rule) if got else Answer(None, False, rule)
    # No marker: the last number, leaving out a closing remark in parentheses ("= 101 (2 steps)").
    body = _CLOSING_REMARK.sub("", plain)
    values = list(_VALUE.finditer(body)) or list(_VALUE.finditer(body := plain))
    if not values:
        return Answer(None, False, "none")
    last = values[-1]
    rule = "equals" if body[:last.start()].rstrip(" \t$*(").endswith("=") else "last"
    v = _value(last)
    if v is None or _in_expression(body, last):
        return Answer(None, False, rule)
    return Answer(v[0], v[1], rule)


def same_value(a: Answer, b: Answer) -> bool:
    """Equal by value; a percentage also equals its hundredth ("50%" is 50 and 0.5; "0.5" is not 50)."""
    if a.value is None or b.value is None:
        return False
    if a.value == b.value:
        return True
    if a.percent != b.percent:
        pa = a.value / 100 if a.percent else a.value
        pb = b.value / 100 if b.percent else b.value
        return pa == pb
    return False


def verify_number(messages: list[dict[str, str]], completion: str, reference: str) -> float | None:
    ref = final_answer(reference)
    if ref.value is None:
        return None
    return 1.0 if same_value(final_answer(completion), ref) else 0.0


def answer_span(text: str) -> str:
    """The part of `text` that states the final answer, by the same rules as verify:number, for math-verify to read:
    the whole text when it has a \\boxed{} (math-verify prefers it), else the rest of the `####` line, else the
    sentence after the last "answer is"/"result is", else the whole text (math-verify takes its last expression)."""
    text = text or ""
    if boxed_contents(text):
        return text
    hashes = list(_HASHES.finditer(text))
    if hashes:
        return text[hashes[-1].end():].split("\n", 1)[0]
    anchors = list(_ANCHOR.finditer(text))
    if anchors:
        rest = text[anchors[-1].end():]
        end = _AFTER_ANSWER.search(rest)
        span = rest[:end.start()] if end else rest
        if re.search(r"[\d\\]", span):
            return span
    return text


class _NoTimeoutNotice(logging.Filter):
    """Drops math-verify's "Timeout is disabled" notice: verify_math turns the timeout off itself, off the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


def _quiet_math_verify() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _NoTimeoutNotice) for f in log.filters):
            log.addFilter(_NoTimeoutNotice())


def _math_parse(text: str, timeout: int | None) -> list[Any]:
    """math-verify's reading of `text`; a bare formula (no $, no words: "2^{10}", "(1, 2)") is put in $...$, which
    math-verify needs to read it as LaTeX (without, "2^{10}" reads as 2 and "(1, 2)" as 2)."""
    from math_verify import parse

    t = _THOUSANDS_SPACE.sub(",", text.strip().replace("−", "-"))  # math-verify reads neither "−5" nor "1\\,024"
    bare = not re.search(r"\$|\\\(|\\\[|\\boxed|\\fbox", t) and not re.search(r"[A-Za-z]{2}", re.sub(r"\\[A-Za-z]+", "", t))
    if bare and re.search(r"[\\^{}]|^[(\[]", t):
        t = f"${t}$"
    return parse(t, parsing_timeout=timeout)  # type: ignore[arg-type]


def verify_math(messages: list[dict[str, str]], completion: str, reference: str) -> float | None:
    from math_verify import verify

    # math-verify bounds each parse and comparison with signal.alarm, which only the main thread may set; off it
    # (a thread pool), run without the bound rather than fail every call.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    if timeout is None:
        _quiet_math_verify()
    gold = _math_parse(answer_span(reference), timeout)
    if not gold:
        return None
    span = answer_span(completion)
    pred = _math_parse(span, timeout)
    if not pred and span != (completion or ""):
        pred = _math_parse(completion, timeout)
    if not pred:
        return 0.0
    return 1.0 if verify(gold, pred, timeout_seconds=timeout) else 0.0  # type: ignore[arg-type]


def normalise(text: str) -> str:
    t = " ".join((text or "").split()).strip().lower()
    t = t.strip("\"'`“”‘’")
    return t.rstrip(".!?").strip()


def verify_exact(messages: list[dict[str, str]], completion: str, reference: str) -> float | None:
    return 1.0 if normalise(completion) == normalise(reference) else 0.0


class VerifierJudge:
    """A pointwise judge whose score is a function of (prompt messages, completion, reference)."""

    needs_reference = True

    def __init__(self, spec: str, fn: VerifyFn, source_sha256: str | None = None, version: str | None = None) -> None:
        self.spec = spec
        self.fn = fn
        self.source_sha256 = source_sha256
        self.version = version

    def config(self) -> dict[str, object]:
        """What the judge hash is made of: a new version (built-ins) or source hash (user functions) is a new
        hash, so rank never reuses scores the verifier would now give differently."""
        cfg: dict[str, object] = {"kind": "verifier", "name": self.spec, "source_sha256": self.source_sha256}
        if self.version is not None:
            cfg["version"] = self.version
        return cfg

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
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) while it ran: the run stops as anywhere else
            raise
        except BaseException as e:  # noqa: BLE001 - a user function's error, even sys.exit(0), is a recorded failure
            return ScoreResult(cid, None, error=_described(e)[:500], latency_s=time.monotonic() - t0)
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


def _math_verify_version(spec: str) -> str:
    """The installed math-verify's version, read without importing it; one error line when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("math-verify")
    except PackageNotFoundError:
        raise PrefdataError(f"--judge {spec}: needs the math-verify package (pip install 'math-verify>=0.9')") from None


def _described(e: BaseException) -> str:
    """A user function's exception as one line; a SystemExit says that the code called exit, which would
    otherwise end rank silently (with its code as the process's exit status)."""
    if isinstance(e, SystemExit):
        return f"SystemExit: the code called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def build_verifier(spec: str) -> VerifierJudge:
    """`verify:number`, `verify:math`, `verify:exact`, `python:FILE.py:FUNCTION` or `python:package.module:FUNCTION`."""
    if spec.startswith("verify:"):
        name = spec.removeprefix("verify:")
        fns: dict[str, VerifyFn] = {"number": verify_number, "math": verify_math, "exact": verify_exact}
        if name not in fns:
            raise PrefdataError(f"unknown verifier {spec!r}; use verify:number, verify:math, verify:exact or "
                                "python:FILE.py:FUNCTION")
        version = BUILTIN_VERSIONS[name]
        if name == "math":
            version = f"{version}+math-verify-{_math_verify_version(spec)}"  # its upgrades may change verdicts
        return VerifierJudge(spec, fns[name], version=version)
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
        except KeyboardInterrupt:
            sys.modules.pop(mod_name, None)
            raise
        except BaseException as e:  # noqa: BLE001 - any error in the user's file, sys.exit() too, is one error line
            sys.modules.pop(mod_name, None)
            raise PrefdataError(f"--judge {spec!r}: {path} could not be loaded ({_described(e)})") from e
        label = f"python:{path.name}:{func}"
    else:
        try:
            module = importlib.import_module(target)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - sys.exit() on import too: one error line, not a silent exit
            raise PrefdataError(f"--judge {spec!r}: module {target} could not be imported ({_described(e)})") from e
        file = getattr(module, "__file__", None)
        source = Path(file).read_bytes() if file and Path(file).is_file() else target.encode()
        label = f"python:{target}:{func}"
    fn = getattr(module, func, None)
    if fn is None:
        raise PrefdataError(f"--judge {spec!r}: {target} has no function {func!r}")
    if not callable(fn):
        raise PrefdataError(f"--judge {spec!r}: {target}.{func} is not a function")
    return VerifierJudge(label, fn, hashlib.sha256(source).hexdigest()[:16])


__all__ = ["Answer", "VerifierJudge", "answer_span", "boxed_contents", "build_verifier", "final_answer", "is_verifier",
           "last_number", "normalise", "same_value", "verify_exact", "verify_math", "verify_number"]
