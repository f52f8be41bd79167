"""`prefdata generate`'s config and the sampler hash made of its identity fields."""

from __future__ import annotations

import os
from dataclasses import dataclass

from prefdata.config import check_range, check_seed
from prefdata.distributed import check_runner, ray_address_field
from prefdata.errors import PrefdataError
from prefdata.llm.chat import ENGINES
from prefdata.llm.endpoint import check_endpoint, endpoint_field, normalize_urls
from prefdata.models import DEMO_NAME
from prefdata.options import identity_fields, opt
from prefdata.run.records import TRAIN_SUMMARY, stable_hash

BACKENDS = tuple(ENGINES)  # every engine of the model layer samples


@dataclass(frozen=True)
class SampleSpec:
    """One kind of candidate to draw for every prompt: e.g. 4 samples at T=0.8, or 1 greedy."""

    kind: str
    n: int
    temperature: float


@dataclass
class GenerateConfig:
    """How to sample. Fields that change the candidates (`identity=True`) make up the sampler hash; `dtype` is left
    out (the hardware picks it, and run.json records it), `system_prompt` enters the prompt ids instead."""

    prompts: str | None = opt(None, "Prompt file (.jsonl/.json/.parquet/.csv) or a saved `datasets` folder; none: the bundled MT-Bench questions.", identity=False, training_only=True)
    prompt_field: str | None = opt(None, "Column holding the prompt (a string, MT-Bench `turns`, or a messages list); none: auto-detect.", identity=False, training_only=True)
    system_prompt: str | None = opt(None, "System message put before every prompt.", identity=False)
    reference_field: str | None = opt(None, "Column with a reference answer, added as one extra candidate of kind `reference` (AIPO option).", identity=False, training_only=True)
    limit: int | None = opt(None, "Use only the first K prompts (after dropping duplicates).", identity=False, training_only=True)
    model: str | None = opt(None, "Model folder or hub name (vllm/hf), or the served model name (openai); none: the demo model.", identity=True, training_only=True)
    backend: str = opt("vllm", f"Sampler: {' | '.join(BACKENDS)}.", identity=True)
    base_url: list[str] = endpoint_field("base_url")  # --backend openai
    api_key_env: str = endpoint_field("api_key_env")
    n: int = opt(4, "Completions per prompt.", flag=("-n", "--n"), identity=True, training_only=True)
    temperature: float = opt(0.8, "Sampling temperature.", identity=True, training_only=True)
    top_p: float = opt(1.0, "Nucleus sampling: keep the smallest token set of this total probability.", identity=True, training_only=True)
    top_k: int = opt(0, "Keep the K most likely tokens; 0 disables top-k.", identity=True, training_only=True)
    min_p: float = opt(0.0, "Drop tokens below this fraction of the most likely token's probability.", identity=True, training_only=True)
    repetition_penalty: float = opt(1.0, "Penalty on tokens already in the prompt or the completion (1: none).", identity=True)
    max_tokens: int = opt(512, "Max new tokens per completion.", identity=True, training_only=True)
    stop: list[str] = opt([], "Stop string (repeatable).", identity=True)
    seed: int = opt(0, "Engine seed (vLLM CPU cannot take per-request seeds).", identity=True)
    greedy: bool = opt(False, "Add one greedy (temperature 0) candidate per prompt (AIPO option).", identity=True, training_only=True)
    second_temperature: float | None = opt(None, "Also draw --second-n candidates at this temperature (AIPO option).", identity=True, training_only=True)
    second_n: int | None = opt(None, "Candidates at --second-temperature; none: -n.", identity=True, training_only=True)
    max_model_len: int | None = opt(None, "vLLM context length; none: the model's.", identity=True)
    dtype: str = opt("auto", "vLLM / transformers compute dtype: auto (bf16 where the CPU or GPU computes it natively, "
                     "else float32 on CPU, float16 on GPU; not the checkpoint's) | float32 | bfloat16 | float16.", identity=False)
    tensor_parallel_size: int = opt(1, "vLLM tensor parallel GPUs.", flag=("--tensor-parallel-size", "--tp"), identity=False)
    data_parallel_size: int | None = opt(None, "Engines, one per GPU group. Local: `prefdata generate` starts one --shard "
                                         "process per group (command line only); none: 1. --engine ray: engine actors; none: "
                                         "the cluster's GPUs / --tp, or its nodes on CPU.", flag=("--data-parallel-size", "--dp"),
                                         identity=False)
    engine: str = opt("local", "Where the engines run: local (this machine) | ray (an actor pool on a Ray cluster; the "
                      "run directory stays on this machine).", identity=False)
    ray_address: str | None = ray_address_field()
    gpu_memory_utilization: float = opt(0.9, "vLLM share of GPU memory.", identity=False)
    batch_size: int = opt(64, "Prompts per shard: the most a crash can lose.", identity=False)
    hf_batch_size: int = opt(8, "Prompts per transformers generate call (--backend hf).", identity=False)
    # --backend openai: the endpoint's fields (llm/endpoint.py), with sampling's own defaults where they differ from the
    # judge's. A sampling request asks for n completions of up to max_tokens each: it runs for minutes where a verdict
    # takes seconds (timeout 600 s, not 120). A failed request stops generate (it has no row to record a failure in, as
    # a judge has), so retries are more patient (6 from 1 s, not 4 from 0.5 s). The server batches what is in flight,
    # and sampling is its whole load, so 32 in flight (the judge's 8 leaves room on an endpoint that also serves others).
    concurrency: int = endpoint_field("concurrency", default=32)
    max_retries: int = endpoint_field("max_retries", default=6)
    backoff_s: float = endpoint_field("backoff_s", default=1.0)
    requests_per_minute: float | None = endpoint_field("requests_per_minute")
    timeout_s: float = endpoint_field("timeout_s", default=600.0)
    unreachable_after: int = endpoint_field("unreachable_after")
    server_token_ids: bool = opt(True, "Ask an OpenAI-compatible vLLM server for token ids to count tokens per candidate.", identity=False)
    shard: str | None = opt(None, "I/K: this process samples only the prompts of shard I (0-based) of K; all shards share one run dir.", identity=False, training_only=True)
    allow_new_config: bool = opt(False, "Allow a second sampler config in a run that already has candidates (kept apart by sampler hash).", identity=False, training_only=True)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        self.base_url = normalize_urls(self.base_url)
        self.check_ranges()
        check_endpoint(self)
        if self.shard is not None:
            parse_shard(self.shard)
        check_runner(self.engine)

    def check_ranges(self) -> None:
        """Values vLLM or the server would reject late (or take silently): refused here, before any work."""
        for flag, value in (("-n", self.n), ("--max-tokens", self.max_tokens), ("--limit", self.limit),
                            ("--second-n", self.second_n), ("--max-model-len", self.max_model_len),
                            ("--tensor-parallel-size", self.tensor_parallel_size), ("--batch-size", self.batch_size),
                            ("--data-parallel-size", self.data_parallel_size),
                            ("hf_batch_size", self.hf_batch_size)):
            check_range(flag, value, 1)
        check_range("--temperature", self.temperature, 0)
        check_range("--second-temperature", self.second_temperature, 0)
        check_range("--top-p", self.top_p, 0, 1, lo_open=True)
        check_range("--top-k", self.top_k, -1)
        check_range("--min-p", self.min_p, 0, 1)
        check_range("--repetition-penalty", self.repetition_penalty, 0, lo_open=True)
        check_range("--gpu-memory-utilization", self.gpu_memory_utilization, 0, 1, lo_open=True)
        check_seed("--seed", self.seed)
        if any(not s for s in self.stop):
            raise PrefdataError("--stop takes a non-empty string")

    @property
    def timeout(self) -> float:
        """The name `timeout_s` had before generate and rank shared the endpoint's names (read-only)."""
        return self.timeout_s

    def plan(self) -> list[SampleSpec]:
        plan = [SampleSpec("sample", self.n, self.temperature)]
        if self.greedy:
            plan.append(SampleSpec("greedy", 1, 0.0))
        if self.second_temperature is not None:
            plan.append(SampleSpec("temp2", self.second_n or self.n, self.second_temperature))
        return plan


def parse_shard(spec: str) -> tuple[int, int]:
    try:
        i, k = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like I/K (e.g. 0/4), got {spec!r}") from None
    if k < 1 or not 0 <= i < k:
        raise ValueError(f"shard {spec!r}: need 0 <= I < K")
    return i, k


def in_shard(prompt_id_: str, shard: tuple[int, int] | None) -> bool:
    """Stable split by id: the same prompt always lands in the same shard, whatever the file order."""
    return shard is None or int(prompt_id_[:12], 16) % shard[1] == shard[0]


def model_label(cfg: GenerateConfig) -> str:
    """A machine-independent model name for hashes and provenance (never a local absolute path)."""
    if cfg.model is None or cfg.model in ("demo", DEMO_NAME, f"HuggingFaceTB/{DEMO_NAME}"):
        return f"HuggingFaceTB/{DEMO_NAME}"
    if os.path.isdir(cfg.model):
        parts = os.path.abspath(cfg.model).rstrip("/").split("/")
        # A prefdata checkpoint (e.g. an iterate round's `train/`) is named by its round folder too.
        return "/".join(parts[-2:]) if os.path.isfile(os.path.join(cfg.model, TRAIN_SUMMARY)) else parts[-1]
    return cfg.model


def sampler_hash(cfg: GenerateConfig) -> str:
    """The hash of the fields marked `identity=True` (the model by its machine-independent label and its files)."""
    d = {k: getattr(cfg, k) for k in identity_fields(GenerateConfig) if k != "model"}
    d["model"] = model_label(cfg) if cfg.backend != "openai" else cfg.model
    if cfg.model and cfg.backend != "openai":
        # A local folder: its weights, not its path, identify it (the path differs across machines), so an
        # in-place overwrite is a new sampler; a hub name: its commit (the key the reference-log-prob cache uses).
        d["model_files"] = _model_fingerprint(cfg.model)
    return stable_hash(d, 12)


def _model_fingerprint(model: str) -> str:
    from prefdata.fingerprint import model_hash

    return model_hash(model)
