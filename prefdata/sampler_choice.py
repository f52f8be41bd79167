"""Which sampler's candidates `rank` and `export` work on.

A run may hold the candidates of several sampler configs (`generate --allow-new-config`, kept apart by their
sampler hash). Ranked together, one prompt's ranking pooled both samplers' answers (and the reference answer,
which generate adds once per sampler, twice), so exported pairs took chosen and rejected from different
samplers. So a stage takes one sampler at a time, named by `--sampler HASH` (a unique prefix will do), and
refuses to guess when there are several; `--sampler all` mixes them as an explicit choice (eval ranks its
model's answers against the baseline's that way).
"""

from __future__ import annotations

from typing import Any

from prefdata.errors import PrefdataError

ALL = "all"


def describe(meta: dict[str, Any], samplers: list[str]) -> str:
    """`HASH (model M)` for each sampler, with the model generate recorded for it where there is one."""
    gen = meta.get("stages", {}).get("generate", {})
    parts = []
    for h in samplers:
        model = (gen.get(h) or {}).get("config", {}).get("model")
        parts.append(f"{h} (model {model})" if model else h)
    return ", ".join(parts)


def choose_sampler(samplers: list[str], wanted: str | None, meta: dict[str, Any], where: str, verb: str) -> str | None:
    """The full hash `--sampler` names among `samplers` (the run's, sorted), or None for no filter: one sampler
    and no `--sampler`, or `--sampler all`. Several samplers and no `--sampler`: one line listing them."""
    if wanted == ALL:
        return None
    if wanted is None or not wanted.strip():
        if len(samplers) <= 1:
            return None
        raise PrefdataError(
            f"{where} holds the candidates of {len(samplers)} samplers ({describe(meta, samplers)}); {verb} one at a "
            "time with --sampler HASH (a unique prefix will do), or all together, pairs mixing samplers, with "
            f"--sampler {ALL}"
        )
    found = [h for h in samplers if h.startswith(wanted.strip())]
    if len(found) != 1:
        what, fix = ("matches several samplers", "give more of the hash") if found else ("matches no sampler", "pick one")
        raise PrefdataError(f"--sampler {wanted} {what} of {where} (samplers: {describe(meta, samplers) or 'none'}); {fix}")
    return found[0]
