"""Export a ranked run as a preference dataset folder: data files + a dataset card, exactly what goes to the Hub.

`export_run(run, cfg)` is the one entry point (the CLI and `iterate` call it). It joins rankings, candidates
and prompts by id (never by text or row position, and every join is checked), forms pairs by the rules of
`tests/pairs.py` (as polars tables, `prefdata.export.tables`), counts every dropped pair by reason, splits
train/test by prompt_id, and writes the folder atomically (a temp folder, then rename), so a failed export
never leaves half a dataset behind. It streams: GROUP_PROMPTS ranked prompts at a time are read lazily, paired
and appended to the data files, so its memory follows the group size, not the run's.

Modules: `config` (ExportConfig), `run` (export_run), `inputs` (reading the ranked run), `tables` (pairs as
polars tables), `writers` (one per format), `summary`, `card` (the dataset card), `folder` (the atomic
folder and its manifest), `push` (to the Hub).
"""

from prefdata.export.config import SHAPES, ExportConfig
from prefdata.export.inputs import pick_judge, split_point, split_prompt_ids, truncated_inputs
from prefdata.export.run import export_run
from prefdata.export.summary import ExportSummary
from prefdata.export.writers import FORMATS

__all__ = ["FORMATS", "SHAPES", "ExportConfig", "ExportSummary", "export_run", "pick_judge", "split_point",
           "split_prompt_ids", "truncated_inputs"]  # fmt: skip
