"""Issue 9.14: pairs whose reward-model score came from an input cut to --rm-max-length are dropped by
default (`--keep-truncated` keeps them) and counted in the summary and the card. Real tiny reward model."""

from __future__ import annotations

import polars as pl

from prefdata.export import ExportConfig, export_run, truncated_inputs
from prefdata.judges.reward_model import RewardModelJudge
from prefdata.judges.verdict import Candidate, ScoreRequest
from prefdata.rank import RankConfig, rank_run, read_judgments
from tests.helpers import make_candidates_run

SHORT = ["Cats purr.", "Cats sleep a lot.", "Cats chase mice at night."]
LONG = "Cats are small carnivorous mammals that people keep as pets. " * 12


def test_cut_reward_model_inputs_are_dropped_and_counted(tmp_path, tiny_rm_dir):
    q = "Tell me about cats."
    run, pids = make_candidates_run(tmp_path / "run", [SHORT + [LONG], SHORT], questions=[q, "Anything about cats?"])
    judge = RewardModelJudge(str(tiny_rm_dir))
    lengths = [len(judge.encode(ScoreRequest("p", (("user", q),), Candidate("c", t)))[0]) for t in SHORT + [LONG]]
    limit = max(lengths[:3]) + 2  # every short candidate fits, the long one is cut
    assert lengths[3] > limit
    rank_run(run, RankConfig(judge=str(tiny_rm_dir), rm_max_length=limit, progress=False))
    j = read_judgments(run, next(p.name for p in (run.path / "judgments").iterdir()))
    assert j["truncated"].sum() == 1
    (cut,) = truncated_inputs(run, j["judge_hash"][0])
    assert cut[0] == pids[0]

    s = export_run(run, ExportConfig(pairs="all", out=str(tmp_path / "dropped")))
    rows = pl.read_parquet(tmp_path / "dropped" / "data" / "*.parquet")
    assert cut[1] not in set(rows["chosen_id"]) | set(rows["rejected_id"])
    assert s.drops.get("judge_input_truncated") == 3 and s.n_rows == 3 + 3  # 3 pairs per prompt survive
    card = (tmp_path / "dropped" / "README.md").read_text()
    assert "(`judge_input_truncated`) | 3 |" in card
    assert "| reward-model inputs cut to the model's max length (scored without their start) | 1 |" in card

    s = export_run(run, ExportConfig(pairs="all", keep_truncated=True, out=str(tmp_path / "kept")))
    assert "judge_input_truncated" not in s.drops and s.n_rows == 6 + 3
    kept = pl.read_parquet(tmp_path / "kept" / "data" / "*.parquet")
    assert cut[1] in set(kept["chosen_id"]) | set(kept["rejected_id"])
