"""The README must not present inferred algorithms as the papers' own (issue 9.15)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _paragraph(text: str, start: str) -> str:
    i = text.index(start)
    end = text.find("\n- ", i + len(start))
    return text[i : end if end != -1 else len(text)]


def test_iterative_strategy_is_labelled_inferred():
    text = README.read_text(encoding="utf-8")
    para = " ".join(_paragraph(text, "- `--strategy iterative`").split())
    assert "inferred" in para and "2411.05875" in para and "abstract" in para
    # The demo loop ranks by a verifier's scores; the LLM-judge loop is the one that ranks pairwise.
    loop = " ".join(text[text.index("With a real LLM judge") :][:400].split())
    assert "iterative pairwise ranking in an inferred form" in loop
