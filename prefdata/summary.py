"""The one shape of a stage's result: `verb(run, Config) -> Summary`, with `.lines()` for the terminal and
`.to_dict()` for JSON, so a command only builds the config, calls the library and prints the lines.

Stages with a fixed set of counts (generate, export, push) have their own dataclass fields. Stages whose
result is the JSON record they also write to disk (train's prefdata_train.json, eval.json, judge-eval's
summary), with keys that depend on the judge, the loss or the dataset, subclass `RecordSummary`: it reads like
that record (`s["accuracy"]`, `s.get("eval")`), so callers and the files keep one set of keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class Summary(Protocol):
    """What every stage returns."""

    def lines(self) -> list[str]: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(eq=False)  # Mapping's __eq__: equal to another summary or dict with the same keys and values
class RecordSummary(Mapping[str, Any]):
    """A stage summary that is the JSON record the stage writes; `lines()` is the subclass's."""

    record: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)

    def lines(self) -> list[str]:
        raise NotImplementedError
