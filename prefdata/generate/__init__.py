"""`prefdata generate`: N completions per prompt into the run directory, resumable.

Reads:  a prompt file (or the bundled MT-Bench questions).
Writes: prompts.parquet (prompt_id, messages, source, reference) and candidates/shard-*.parquet with
        prompt_id, candidate_id, sampler_hash, kind, index, text, finish_reason, n_tokens, model.

A shard holds every candidate of a batch of prompts, so a prompt is either fully done or not started;
a rerun skips prompts already done under the same sampler config (kill -9 loses at most one batch).

Modules: `config` (GenerateConfig, the plan, the sampler hash), `sampling` (the plan as requests to a chat model of
`prefdata.llm`, whichever engine `--backend` names), `run` (generate_run).
"""

from prefdata.generate.config import GenerateConfig, in_shard, model_label, sampler_hash
from prefdata.generate.run import GenerateSummary, generate_run, prompts_todo, sampler_dtype

__all__ = ["GenerateConfig", "GenerateSummary", "generate_run", "in_shard", "model_label", "prompts_todo", "sampler_dtype",
           "sampler_hash"]  # fmt: skip
