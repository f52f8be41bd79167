"""`prefdata iterate`: generate → rank → export → train, round after round (the AIPO loop).

Round t samples from the checkpoint of round t−1 (the starting model for t = 0), ranks with a judge that
stays fixed across rounds, exports best-vs-worst pairs, and trains from that same checkpoint with it as
the reference (AIPO, papers.md 1.3). Every stage is resumable, so running the same command again after a
stop or a crash continues where it stopped.

Layout:
    WORKDIR/iterate.json            the loop's config and command lines
    WORKDIR/round-<t>/              a run directory (run.json, prompts, candidates, judgments, rankings)
    WORKDIR/round-<t>/exports/pairs the round's preference data (dataset card included)
    WORKDIR/round-<t>/train/        the round's checkpoint (the next round's policy and reference)
    WORKDIR/rounds.md, rounds.parquet, rounds.png   the per-round summary, rebuilt from the round folders

Modules: `config` (IterateConfig, the stage mappings), `loop` (the rounds, engine reuse), `eval` (every round
against the start on held-out prompts), `report` (the rounds table and plot).
"""

from prefdata.iterate.config import LOOP_DEFAULTS, LOOP_FLAGS, RESERVED, STAGE_CLASSES, IterateConfig, RoundNotFinal
from prefdata.iterate.loop import iterate, reload_weights
from prefdata.iterate.report import IterateSummary

__all__ = ["LOOP_DEFAULTS", "LOOP_FLAGS", "RESERVED", "STAGE_CLASSES", "IterateConfig", "IterateSummary", "RoundNotFinal",
           "iterate", "reload_weights"]  # fmt: skip
