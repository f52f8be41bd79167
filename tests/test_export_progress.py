"""Issue 14: export shows a progress bar of the rows it writes, on a terminal only (captured output stays clean)."""

from __future__ import annotations

import io

import prefdata.console as console
import prefdata.export.run as export_mod
from prefdata.export import ExportConfig, export_run
from tests.helpers import four, make_ranked_run


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_export_bar_counts_rows_on_a_terminal(tmp_path, monkeypatch):
    run = make_ranked_run(tmp_path / "run", [(f"q{i}", four(f"{i} ")) for i in range(5)])
    term = _Terminal()
    monkeypatch.setattr(console, "_terminal", term)
    monkeypatch.setattr(export_mod, "GROUP_PROMPTS", 2)
    s = export_run(run, ExportConfig(pairs="all", out=str(tmp_path / "a"), plot=False))
    assert s.n_rows == 30
    assert "export: 30row" in term.getvalue().replace(" row", "row")


def test_no_bar_when_not_a_terminal(tmp_path, monkeypatch, capsys):
    run = make_ranked_run(tmp_path / "run", [("q", four())])
    export_run(run, ExportConfig(out=str(tmp_path / "a"), plot=False))
    assert "export:" not in capsys.readouterr().err
