"""One config dataclass per stage, filled from `--config FILE.yaml` and then from explicit CLI flags.

Order of precedence: flags given on the command line > the YAML file > the dataclass defaults.
CLI options default to None so that "not given" can be told apart from "given the default value".
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prefdata.errors import PrefdataError
from prefdata.secrets import looks_like_secret

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise PrefdataError(f"config file {p} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise PrefdataError(f"config file {p} is not valid YAML{where}; fix the syntax") from e
    if not isinstance(data, dict):
        raise PrefdataError(f"config file {p} must be a YAML mapping of field: value")
    return data


def field_aliases(cls: type) -> dict[str, str]:
    """{old name: field name} for the renamed fields of `cls` (see `opt`'s `aliases`)."""
    return {old: f.name for f in dataclasses.fields(cls) for old in f.metadata.get("aliases", ())}


def rename_aliases(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` with old field names put under their new ones; both names given at once is one error line."""
    renamed = field_aliases(cls)
    out = dict(values)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise PrefdataError(f"{where}: {old} is the old name of {new}; give only {new}")
            out[new] = out.pop(old)
    return out


def build_config(cls: type[T], config_file: str | Path | None = None, **flags: Any) -> T:
    """Build `cls` from a YAML file and the flags that were given (None means not given)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if config_file is not None:
        data = load_yaml(config_file)
        data = {k.replace("-", "_"): v for k, v in data.items()}
        data = rename_aliases(cls, data, f"config file {config_file}")
        unknown = sorted(set(data) - set(fields))
        moved = getattr(cls, "MOVED_FIELDS", {})  # fields an earlier version had here, now under a stage mapping
        if any(k in moved for k in unknown):
            where = ", ".join(f"{k} under {moved[k]}:" for k in unknown if k in moved)
            raise PrefdataError(f"config file {config_file}: write {where} (the stage's own field)")
        if unknown:
            raise PrefdataError(
                f"config file {config_file}: unknown field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(fields))}"
            )
        values.update(data)
    for k, v in flags.items():
        if k not in fields:
            raise KeyError(f"{cls.__name__} has no field {k}")
        if v is None or (isinstance(v, list | tuple) and len(v) == 0):
            continue
        values[k] = v
    hints = typing.get_type_hints(cls)
    for k, v in list(values.items()):
        values[k] = _coerce(k, v, hints.get(k))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise PrefdataError(f"invalid {cls.__name__}: {e}") from e


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Light type checking for YAML values (ints given for floats, a string given for a list); a float must be
    finite (NaN compares false with every bound, so a range check alone lets it through)."""
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(name, value, non_none[0])
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1024 else math.inf
    if hint is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads `5e-7` (no dot) as a string; it is the float everyone means
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        # every float option passes here (flags, YAML, --set): `--min-margin nan` used to pass every range check
        raise PrefdataError(f"{name} must be a finite number, got {value}")
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if origin is list and args == (float,):
        return [_coerce(name, v, float) for v in (value if isinstance(value, list) else [value])]
    if origin is list and isinstance(value, str | int | float):
        return [value]
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise PrefdataError(f"config field {name!r} must be {hint.__name__}, got {value!r}")
    return value


def check_range(
    flag: str, value: float | int | None, lo: float | None = None, hi: float | None = None, *,
    lo_open: bool = False, hi_open: bool = False,
) -> None:  # fmt: skip
    """Refuse a value outside [lo, hi] (or the open ends) with one line naming the flag; None means unset.

    Written as `not (inside)` so that NaN is refused too."""
    if value is None:
        return
    inside = (lo is None or (value > lo if lo_open else value >= lo)) and (
        hi is None or (value < hi if hi_open else value <= hi)
    )
    if not inside:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        span = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
        raise PrefdataError(f"{flag} must be in {span}, got {value}")


SEED_MAX = 2**32 - 1  # numpy's seed (vLLM and transformers seed it) takes no more; torch.manual_seed stops at 2**64


def check_seed(flag: str, value: int | None) -> None:
    """Refuse a seed the libraries would overflow on deep inside a run (after its lock and logs/ exist)."""
    if value is not None and not 0 <= value <= SEED_MAX:
        raise PrefdataError(f"{flag} must be in [0, {SEED_MAX}], got {value}")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_name(flag: str, value: str) -> None:
    """`value` must be the NAME of an environment variable, never a key pasted in its place: a key given
    here would be recorded in run.json and the dataset card. The message never repeats the value."""
    if looks_like_secret(value) or not _ENV_NAME.match(value):
        what = "looks like a key itself" if looks_like_secret(value) else "is not a variable name"
        raise PrefdataError(
            f"{flag} takes the NAME of an environment variable holding the key (e.g. OPENAI_API_KEY), but the value "
            f"given {what}; put the key in a variable (export MY_KEY=...) and pass {flag} MY_KEY"
        )


def stage_fields(
    cls: type, values: dict[str, Any], where: str, reserved: tuple[str, ...] = (), who: str = "the loop"
) -> dict[str, Any]:
    """Check a mapping of `cls` fields given as YAML or `--set` (unknown names, types), before any work starts.

    `reserved`: fields `who` (the command) sets itself. Returns the values coerced to the fields' types (an int
    given for a float field becomes a float)."""
    values = rename_aliases(cls, values, where)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(fields), n=1)
        hint = f"did you mean {close[0]}?" if close else (
            f"known fields: {', '.join(sorted(fields))}" if len(fields) <= 40 else f"see the fields of {cls.__name__}"
        )  # fmt: skip
        raise PrefdataError(f"{where}: unknown field(s) {', '.join(unknown)} for {cls.__name__}; {hint}")
    fixed = sorted(set(values) & set(reserved))
    if fixed:
        raise PrefdataError(f"{where}: {', '.join(fixed)} is set by {who} itself; use {who}'s own option instead")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in values.items():
        try:
            out[k] = _coerce(k, v, hints.get(k))
        except PrefdataError as e:
            raise PrefdataError(f"{where}.{k}: {e}") from None
    return out
