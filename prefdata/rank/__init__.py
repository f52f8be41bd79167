"""The `rank` stage: judge the candidates of every prompt and write judgments and one ranking per prompt.

Modules: `config` (RankConfig, the judge hash), `run` (the run), `pairwise` and `scores` (the two drivers),
`output` (content keys, ranking rows, the summary), and the ranking algorithms as pure functions: `ranking`
(types, position-bias policy, iterative, round robin, Bradley-Terry, scores), `sort` (the sort strategy) and
`strategies` (the registry). The judge comes from `prefdata.judges`, the run's groups of prompts from
`prefdata.run.groups`.

Flow: read the ids of prompts and candidates (joined by prompt_id, counts checked; no text yet), build the
judge, compute the judge hash, load the answered judgments already in `judgments/<judge_hash>/` (without their
raw output), then work through the prompts in groups of `group_size`, in prompts.parquet order: read the
group's texts (a lazy scan of the candidate shards that hold them, filtered by id), run the strategy of every
prompt of the group in lockstep: each round collects the judge calls that prompts still need (up to
`batch_size`), asks the judge, and appends them as one shard before anything else happens. Then the group's
rankings are written as a hidden part and the group is dropped, so memory follows the group size, not the run.
A crash or Ctrl-C therefore loses at most the round in flight; a rerun reuses every answered call and asks
again only what is missing or failed. Rankings are derived from judgments, so they are rebuilt on every run
and become visible at the end (the parts in one shard, old ones removed). A reward model's requests queue across
groups, so its batches are those of the whole run at once.

Judgment rows (one per judge call): a_id is the candidate shown first; `order` is 0 when a_id comes first in
the prompt's candidate order (kind, index, id) and 1 when the call swapped them; verdict a|b|tie|fail is
relative to a_id/b_id and winner_id names the id. Reward-model rows score one candidate: a_id = candidate,
b_id = null, verdict "score" (or "fail"), plus n_tokens and truncated. Failed calls are kept with their raw
text and error, and are asked again by the next run. The cache is keyed on content: a row is reused only when
its `content_key` (a hash of the judge hash, the prompt, the reference and both texts in the order shown)
equals that of the candidates as they are now, so a changed text is judged again, never mixed up by id.
Rows written before content keys existed (no `content_key`) are asked again once.

Candidates with identical text in one prompt tie without a judge call (no row), so a tie can never turn into
a chosen/rejected pair with the same text.
"""

from prefdata.rank.config import EXIT_FAILURES, JudgeUnreachable, RankConfig, judge_identity
from prefdata.rank.output import RankSummary, read_judgments, read_rankings
from prefdata.rank.run import rank_run

__all__ = ["EXIT_FAILURES", "JudgeUnreachable", "RankConfig", "RankSummary", "judge_identity", "rank_run",
           "read_judgments", "read_rankings"]  # fmt: skip
