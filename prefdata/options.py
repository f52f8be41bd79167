"""Each option is declared once, on its config dataclass field; the CLI flags are built from the fields.

A field's metadata carries its help text and, where the flag is not `--field-name`, its flag names:

    n: int = opt(4, "Completions per prompt.", flag=("--n", "-n"))

`verb_command` turns a config class into a typer command whose options are every field of the class (default
None: "not given", so that `--config FILE.yaml` values stay unless a flag overrides them) plus the verb's own
options (`--run`, `--config`, ...). The command builds the config with `build_config` and hands it to the verb.
The config class is named by its import path and imported only when the verb is built, so `prefdata rank`
never imports the trainer's dependencies.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

_UNSET: Any = object()


def opt(default: Any = MISSING, help: str = "", *, flag: str | tuple[str, ...] | None = None, sep: str | None = None,
        cli: bool = True, identity: bool | str | None = None, training_only: bool = False,
        aliases: tuple[str, ...] = ()) -> Any:  # fmt: skip
    """A dataclass field with its CLI help and flag names. A list/dict default becomes a default_factory.

    sep: a list flag also takes one value holding several items joined by `sep` (`--x a,b`).
    cli: False keeps the field out of the flags (a nested mapping set with `--set STAGE.FIELD=VALUE`).
    identity: whether the field changes the stage's results, so its hash (sampler hash, judge hash): True (its
      value enters the hash), "judge" (it enters through the judge's own record, `judge.config()`), False (it
      does not change results: transport, batching, paths). Read by `identity_fields`; a test requires it on
      every field of the hashed configs, so a new field cannot fall out of the hash unnoticed.
    training_only: a generate setting of the training samples that eval's greedy answers do not take.
    aliases: names an earlier version gave the field, still accepted as YAML keys and `--set` names (give the old
      flag in `flag=` too), so a user's config keeps working after a rename."""
    meta: dict[str, Any] = {"help": help, "cli": cli}
    if flag is not None:
        meta["flag"] = flag
    if sep is not None:
        meta["sep"] = sep
    if identity is not None:
        meta["identity"] = identity
    if training_only:
        meta["training_only"] = True
    if aliases:
        meta["aliases"] = tuple(aliases)
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)  # type: ignore[arg-type]
    return dataclasses.field(default=default, metadata=meta)


def identity_fields(cls: type, how: bool | str = True) -> tuple[str, ...]:
    """The fields of `cls` whose `identity` marker is `how` (see `opt`), in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("identity") == how)


def flag_names(f: Field) -> list[str]:
    """The field's flags; a bool gets its `--no-` form unless the metadata names one (`--keep/--drop`)."""
    given = f.metadata.get("flag")
    names = [given] if isinstance(given, str) else list(given or ["--" + f.name.rstrip("_").replace("_", "-")])
    return names


def cli_fields(cls: type) -> list[Field]:
    """The fields that get a flag: every init field not marked cli=False and not private. The class's own fields
    come first (AIPOConfig's before the TrainingArguments fields it inherits)."""
    own = set(vars(cls).get("__annotations__", {}))
    fields = [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_") and f.metadata.get("cli", True)]
    return sorted(fields, key=lambda f: f.name not in own)


def _kind(hint: Any) -> tuple[Any, str]:
    """(the type typer parses, how the value is handled): scalar, bool, list, or yaml for anything else
    (dicts, unions of several types), which is read as a YAML value like `--set` does."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        rest = [a for a in args if a not in enums]
        if len(rest) == 1 and (not enums or rest[0] is str):
            return _kind(rest[0])
        return str, "yaml"
    if hint is bool:
        return bool, "bool"
    if hint in (int, float, str):
        return hint, "scalar"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return str, "scalar"
    if origin is list and len(args) == 1 and args[0] in (int, float, str):
        return list[args[0]], "list"  # type: ignore[valid-type]
    return str, "yaml"


def default_text(f: Field) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple | dict) and not value:
        return "none"
    return str(value)


def _first_line(text: str) -> str:
    return " ".join(text.split())


def field_parameters(cls: type, positional: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One typer parameter per CLI field of `cls`, all defaulting to None (not given)."""
    hints = typing.get_type_hints(cls)
    return [_parameter(f, hints[f.name], f.name, flag_names(f), default_text(f), f.name in positional)
            for f in cli_fields(cls)]  # fmt: skip


def _parameter(f: Field, hint: Any, name: str, names: list[str], shown: str, positional: bool = False) -> inspect.Parameter:
    import typer
    from typer.core import DEFAULT_MARKUP_MODE

    _open = "\\[" if DEFAULT_MARKUP_MODE else "["  # rich markup would take [default: 4] for a tag and drop it
    ptype, kind = _kind(hint)
    help_text = f"{_first_line(f.metadata.get('help', ''))} {_open}default: {shown}]".strip()
    if positional:
        info = typer.Argument(None, help=help_text, show_default=False)
    else:
        if kind == "bool" and not any("/" in n for n in names):
            long = next(n for n in names if n.startswith("--"))
            names = [f"{long}/--no-{long[2:]}", *[n for n in names if n != long]]
        if kind == "yaml":
            help_text += " (a YAML value)"
        info = typer.Option(None, *names, help=help_text, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=typing.Optional[ptype])  # noqa: UP045  (typer reads it)


def stage_parameters(stages: dict[str, dict[str, str | tuple[str, ...]]], classes: dict[str, str],
                     defaults: dict[str, dict[str, Any]]) -> list[inspect.Parameter]:  # fmt: skip
    """Flags for chosen fields of other verbs' configs (iterate's -n is generate's n): the help and type are the
    stage field's, the flag names and shown default the caller's. Parameter names are STAGE__FIELD."""
    params = []
    for stage, wanted in stages.items():
        cls = load_class(classes[stage])
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, flags in wanted.items():
            f = fields[name]
            shown = str(defaults[stage][name]) if name in defaults.get(stage, {}) else default_text(f)
            names = [flags] if isinstance(flags, str) else list(flags)
            params.append(_parameter(f, hints[name], f"{stage}__{name}", names, shown))
    return params


def stage_values(classes: dict[str, str], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The STAGE__FIELD values that were given, as {stage: {field: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in given.items():
        stage, _, name = key.partition("__")
        if value is None or (isinstance(value, list | tuple) and not value):
            continue
        cls = load_class(classes[stage])
        out.setdefault(stage, {}).update(flag_values(cls, {name: value}, only=(name,)))
    return out


def flag_values(cls: type, given: dict[str, Any], only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The values typer parsed for the fields of `cls` (None or empty: not given), YAML-typed ones parsed,
    `sep`-joined list items split."""
    import yaml

    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in cli_fields(cls) if only is None else [f for f in dataclasses.fields(cls) if f.name in only]:
        value = given.get(f.name)
        if value is None or (isinstance(value, list | tuple) and not value):
            continue
        kind = _kind(hints[f.name])[1]
        if kind == "yaml":
            value = yaml.safe_load(value)
        elif kind == "list":
            sep = f.metadata.get("sep")
            value = [p.strip() for v in value for p in (v.split(sep) if sep else [v]) if not sep or p.strip()]
        out[f.name] = value
    return out


def verb_option(name: str, annotation: Any, *decls: str, default: Any = None, help: str = "",
                argument: bool = False, **kw: Any) -> inspect.Parameter:  # fmt: skip
    """An option of the verb itself, not of its config (`--run`, `--config`, `--quiet`)."""
    import typer

    info = typer.Argument(default, help=help, **kw) if argument else typer.Option(default, *decls, help=help, **kw)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


# The options below belong to the verb, not to its config: the folder or file a stage works on (`run` in
# `verb(run, Config)`) changes from one call to the next while one YAML config serves them all, and --config,
# --quiet and --set say how to read the config and how to report. Commands take them from here.


def run_option(help: str = "Run directory.", name: str = "run", flags: tuple[str, ...] = ("--run",)) -> inspect.Parameter:
    """The run directory the stage reads and writes (iterate's is its workdir)."""
    return verb_option(name, Path, *flags, default=..., help=help)


def input_argument(name: str, annotation: Any, help: str) -> inspect.Parameter:
    """The stage's input as a positional argument (train's dataset, push's export folder): like --run, what the
    stage works on, not a setting a config file would fix."""
    return verb_option(name, annotation, default=..., argument=True, help=help)


def config_option() -> inspect.Parameter:
    return verb_option("config", typing.Optional[Path], "--config",  # noqa: UP045
                       help="YAML file of the same fields; flags given on the command line override it.")


def quiet_option() -> inspect.Parameter:
    return verb_option("quiet", bool, "--quiet", default=False, help="No progress bar.")


def set_option(stages: tuple[str, ...]) -> inspect.Parameter:
    return verb_option("set_", list[str], "--set", default=[],
                       help=f"STAGE.FIELD=VALUE for any field of the {'/'.join(stages)} configs (repeatable).")


def load_class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def verb_command(
    config: str,
    body: Callable[..., Any],
    *,
    doc: str,
    options: list[inspect.Parameter] | None = None,
    positional: tuple[str, ...] = (),
    before: tuple[str, ...] = (),
    check: Callable[..., None] | None = None,
) -> Callable[..., Any]:
    """A typer command function for one verb: every field of `config` ("module:Class") as a flag (or
    `positional` argument) plus the verb's own `options`; calls `body(cfg, **verb_options)`.

    `before`: verb options listed ahead of the fields in --help (the run directory, the positional input).
    `check(flags, config_file, **verb_options)` runs before the config is built (inputs to refuse early).
    The YAML file of `--config` is read first, then the flags that were given win."""
    from prefdata.config import build_config

    cls = load_class(config)
    own = list(options or [])
    fields = field_parameters(cls, positional)
    first = [p for p in own if p.name in before]
    rest = [p for p in own if p.name not in before]
    pos = [p for p in fields if p.name in positional]
    params = first + pos + [p for p in fields if p.name not in positional] + rest
    _check_unique(params)
    field_names = {p.name for p in fields}

    def command(**kwargs: Any) -> Any:
        verb_kw = {k: v for k, v in kwargs.items() if k not in field_names}
        config_file, flags = verb_kw.pop("config", None), flag_values(cls, kwargs)
        if check is not None:
            check(flags, config_file, **verb_kw)
        cfg = build_config(cls, config_file, **flags)
        return body(cfg, **verb_kw)

    command.__doc__ = doc
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _check_unique(params: list[inspect.Parameter]) -> None:
    seen: dict[str, str] = {}
    for p in params:
        decls = getattr(p.default, "param_decls", None) or ()
        for d in decls:
            for name in d.split("/"):
                if name in seen:
                    raise ValueError(f"flag {name} is declared by both {seen[name]} and {p.name}")
                seen[name] = p.name


def build_verb_command(module: str, verb: str) -> Any:
    """The click command of `prefdata.cli.commands.<module>` (built on first use: imports its config class)."""
    import typer

    mod = importlib.import_module(f"prefdata.cli.commands.{module}")
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(verb)(mod.command())
    return typer.main.get_command(app)


def parse_sets(
    items: list[str], classes: dict[str, str], reserved: dict[str, tuple[str, ...]] | None = None, who: str = "the loop"
) -> dict[str, dict[str, Any]]:
    """`--set train.learning_rate=1e-6` → {"train": {"learning_rate": 1e-6}}: values parsed as YAML, then checked
    and converted against the stage's config class ("module:Class" in `classes`), so that every verb with --set
    (iterate, eval) refuses a misspelt field ("did you mean") or a wrong type with one line, before any work."""
    import yaml

    from prefdata.config import stage_fields
    from prefdata.errors import PrefdataError

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, fld = key.partition(".")
        if not sep or not dot or stage not in classes:
            raise PrefdataError(f"--set {item!r}: write STAGE.FIELD=VALUE with STAGE one of {', '.join(classes)}")
        try:
            out.setdefault(stage, {})[fld] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise PrefdataError(f"--set {item!r}: the value is not valid YAML; quote it") from None
    return {stage: stage_fields(load_class(classes[stage]), fields, f"--set {stage}", (reserved or {}).get(stage, ()), who)
            for stage, fields in out.items()}  # fmt: skip
