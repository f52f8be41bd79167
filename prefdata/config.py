"""One config dataclass per stage, filled from `--config FILE.yaml` and then from explicit CLI flags.

Order of precedence: flags given on the command line > the YAML file > the dataclass defaults.
CLI options default to None so that "not given" can be told apart from "given the default value".
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prefdata.errors import PrefdataError

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


def build_config(cls: type[T], config_file: str | Path | None = None, **flags: Any) -> T:
    """Build `cls` from a YAML file and the flags that were given (None means not given)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if config_file is not None:
        data = load_yaml(config_file)
        data = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(data) - set(fields))
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


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Light type checking for YAML values (ints given for floats, a string given for a list)."""
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
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if origin is list and isinstance(value, str | int | float):
        return [value]
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise PrefdataError(f"config field {name!r} must be {hint.__name__}, got {value!r}")
    return value


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
