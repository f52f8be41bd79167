"""`AIPOConfig`: every setting of one training stage, with the AIPO paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from prefdata.config import SEED_MAX
from prefdata.train.losses import LOSS_TYPES, MRPO_WEIGHT_MAPPINGS


@dataclass
class AIPOConfig(TrainingArguments):
    r"""Configuration of [`AIPOTrainer`].

    Defaults follow AIPO (Shen et al. 2024, App. A.1 and Table 7; papers.md 1.4): AdamW, lr 5e-7, cosine schedule
    with 10% warmup, 1 epoch per iteration, β 0.1, α 0.09, λ 0.5, prompts up to 512 tokens and sequences up to 2560.
    Fields that differ from [`~transformers.TrainingArguments`]: `learning_rate` (5e-7, not 5e-5),
    `lr_scheduler_type` ("cosine", not "linear"), `warmup_steps` (0.1, a ratio, not 0), `num_train_epochs` (1, not
    3), `logging_steps` (10, not 500), `gradient_checkpointing` (True, as in TRL), `save_only_model` stays False so checkpoints can resume, and
    `remove_unused_columns` (False: the collator needs the tokenized columns).

    > Parameters that control the loss

    loss_type (`str`, *optional*, defaults to `"aipo"`):
        One of `aipo`, `alpha_dpo`, `dpo`, `dpo_nll`, `ipo`, `simpo`, `bcr` (inferred form), `mrpo`.
    beta (`float`, *optional*, defaults to `0.1`):
        Temperature β. SimPO's paper grid uses 2.0-3.0 instead.
    alpha (`float`, *optional*, defaults to `0.09`):
        Agreement coefficient α of `aipo` / `alpha_dpo`: the reference margin is scaled by (1+α).
    lambda_ (`float`, *optional*, defaults to `0.5`):
        Weight λ of the length-normalized NLL term (`aipo`, `dpo_nll`) or of the budget penalty (`bcr`).
    simpo_gamma (`float`, *optional*, defaults to `0.5`):
        SimPO target margin γ.
    bcr_budget (`float`, *optional*, defaults to `1.0`):
        BCR budget δ (nats): how far log π_θ(y_w|x) may fall below the reference before it is penalized. Inferred.
    mrpo_eta (`float`, *optional*, defaults to `0.1`):
        MRPO clipping range ε (negative: fixed ε = −mrpo_eta for both responses).
    mrpo_weights (`list[float]` or `None`, *optional*, defaults to `None`):
        Fixed MRPO weights, one per reference (the starting policy first); None means adaptive (ARWC).
    mrpo_weight_mapping (`str`, *optional*, defaults to `"margin"`):
        `margin`: reference k weighs |Δ_k|; `code`: the official K=2 code's swapped assignment.

    > Parameters that control the reference

    ref_models (`list[str]`, *optional*, defaults to `[]`):
        Reference model folders. Empty: the starting policy is the reference (the AIPO iteration setting). For
        `mrpo` the starting policy is always reference 0 (the primary one) and these are the extra references;
        they must share the policy's tokenizer. Other loss types take at most one.
    ref_batch_size (`int`, *optional*, defaults to `8`):
        Pairs per forward pass when precomputing reference log-probs.
    ref_cache_dir (`str` or `None`, *optional*, defaults to `None`):
        Where reference log-probs are cached. None: a `.prefdata_ref_cache` folder beside the dataset.

    > Parameters that control tokenization

    max_prompt_length (`int`, *optional*, defaults to `512`):
        Prompts longer than this keep their last tokens (the end nearest the response).
    max_length (`int`, *optional*, defaults to `2560`):
        Prompt + response. Longer responses are cut at the end (losing their EOS); the count is logged as a warning.

    > Parameters that control memory

    logps_chunk_tokens (`int`, *optional*, defaults to `1024`):
        The LM head is applied to completion tokens only, this many at a time and recomputed in backward, so the
        [batch, length, vocab] logits never exist. 0 uses the model's own logits (needed under FSDP / ZeRO-3).
        Post-head transforms are applied as each architecture's forward does (Gemma 2/3 softcapping, Granite
        `logits_scaling`, Cohere `logit_scale`); architectures not checked use the model's own logits.
    gradient_checkpointing (`bool`, *optional*, defaults to `True`):
        As in TRL: recompute layer activations in backward (TrainingArguments defaults to False).
    bf16 (`bool` or `None`, *optional*, defaults to `None`):
        bf16 autocast. None turns it on on a CUDA GPU with bf16 (Ampere or newer) and on a CPU with native bf16
        (AVX512-BF16 or AMX), unless `fp16` is set; with the default float32 weights of a full fine-tune this is
        mixed precision with float32 master weights. `--no-bf16` computes in float32.
    dtype (`str`, *optional*, defaults to `"auto"`):
        Dtype of the loaded weights: `auto`, `float32`, `bfloat16` or `float16`. `auto` is float32 master weights
        for a full fine-tune (with `bf16` autocast this is mixed precision) and a bfloat16 frozen base for LoRA.

    > Parameters that control LoRA / QLoRA (see `prefdata.train.lora`)

    lora_r (`int`, *optional*, defaults to `0`):
        LoRA rank; 0 trains every weight (full fine-tune). The reference is the model with its adapters disabled.
    lora_alpha (`float` or `None`, *optional*, defaults to `None`):
        LoRA scaling numerator (the update is scaled by alpha / r); None means 2·r.
    lora_dropout (`float`, *optional*, defaults to `0.05`):
        Dropout on the LoRA input.
    lora_target_modules (`list[str]`, *optional*, defaults to `[]`):
        Module names to adapt; empty means every linear layer of the decoder (not the LM head).
    lora_merge (`bool`, *optional*, defaults to `True`):
        Save a merged bf16 model in `output_dir` (the adapter goes to `output_dir/adapter`). False saves only the
        adapter in `output_dir`, for a vLLM engine with `enable_lora`.
    load_in_4bit (`bool`, *optional*, defaults to `False`):
        QLoRA: the frozen base in 4-bit NF4 (needs a CUDA GPU and bitsandbytes, and `lora_r` > 0).
    """

    loss_type: str = field(default="aipo", metadata={"help": f"One of {', '.join(LOSS_TYPES)}.", "flag": ("--loss-type", "--loss")})
    beta: float = field(default=0.1, metadata={"help": "Temperature β."})
    alpha: float = field(default=0.09, metadata={"help": "Agreement coefficient α (aipo, alpha_dpo)."})
    lambda_: float = field(default=0.5, metadata={"help": "NLL weight λ (aipo, dpo_nll) or budget penalty weight (bcr)."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO target margin γ."})
    bcr_budget: float = field(default=1.0, metadata={"help": "BCR budget δ in nats (inferred form)."})
    mrpo_eta: float = field(default=0.1, metadata={"help": "MRPO clipping range ε."})
    mrpo_weights: list[float] | None = field(default=None, metadata={"help": "Fixed MRPO weights; None is adaptive."})
    mrpo_weight_mapping: str = field(default="margin", metadata={"help": "MRPO weight mapping: margin or code."})
    ref_models: list[str] = field(
        default_factory=list,
        metadata={"help": "Reference model folder (repeatable; default: the policy).", "flag": ("--ref-model", "--ref-models")},
    )
    ref_batch_size: int = field(default=8, metadata={"help": "Pairs per reference forward pass."})
    ref_cache_dir: str | None = field(default=None, metadata={"help": "Reference log-prob cache folder."})
    max_prompt_length: int = field(default=512, metadata={"help": "Maximum prompt tokens (left-truncated)."})
    max_length: int = field(default=2560, metadata={"help": "Maximum prompt + response tokens."})
    logps_chunk_tokens: int = field(default=1024, metadata={"help": "LM-head chunk size in tokens; 0 = plain logits."})
    dtype: str = field(default="auto", metadata={"help": "Loaded weight dtype: auto, float32, bfloat16, float16."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tune."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2·r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={"help": "LoRA module, repeatable or comma-separated (default: all linear layers).", "sep": ","},
    )
    lora_merge: bool = field(
        default=True,
        metadata={"help": "Also save the merged model, in --save-dtype (--no-merge: only the adapter, for vLLM enable_lora).",
                  "flag": "--lora-merge/--no-merge"},
    )
    # An update at lr 5e-7 over ~78 steps is mostly smaller than bf16's spacing: a bf16 save kept about 10% of it,
    # and the next round trained from what was left (bench/RESULTS.md, surviving update). vLLM casts on load.
    save_dtype: str = field(
        default="float32",
        metadata={"help": "Dtype of the saved model: float32 keeps the whole update for the next round (iterate trains "
                  "from it; vLLM casts on load); bfloat16 / float16 halve the size for publishing but round small "
                  "updates away."},
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: 4-bit NF4 base (CUDA + bitsandbytes)."})

    # What `prefdata train` trains and how it treats an output folder that already holds a run; they change no
    # trained weight, so the run identity leaves them out (the model counts by the hash of its files).
    model: str | None = field(default=None, metadata={"help": "Model folder or hub name to train (default: the demo model)."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Checkpoint folder to resume from, or 'latest' (a rerun resumes by itself).",
                  "flag": ("--resume", "--resume-from-checkpoint")},
    )  # fmt: skip
    overwrite: bool = field(
        default=False, metadata={"help": "Delete the checkpoints and summary of a previous run in --output-dir; start over."}
    )

    # TrainingArguments defaults changed to the paper's.
    learning_rate: float = field(default=5e-7, metadata={"help": "AdamW learning rate (paper: 5e-7).", "flag": ("--learning-rate", "--lr")})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Pairs per device per step.", "flag": ("--per-device-train-batch-size", "--batch-size")}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Scheduler (paper: cosine)."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup steps, or a ratio of total steps if < 1."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs per iteration (paper: 1)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the tokenized columns."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in backward."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast; None: on for a GPU or CPU with native bf16."})

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.mrpo_weight_mapping not in MRPO_WEIGHT_MAPPINGS:
            raise ValueError(f"mrpo_weight_mapping must be one of {', '.join(MRPO_WEIGHT_MAPPINGS)}")
        if self.loss_type == "simpo" and self.ref_models:
            raise ValueError("loss_type simpo uses no reference model; drop ref_models (--ref-model)")
        if self.loss_type != "mrpo" and len(self.ref_models) > 1:
            raise ValueError(f"loss_type {self.loss_type} takes one reference model; several are for mrpo")
        if self.loss_type == "mrpo" and self.mrpo_weights is not None and len(self.mrpo_weights) != 1 + len(self.ref_models):
            raise ValueError("mrpo_weights needs one weight for the starting policy plus one per --ref-model")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        self._check_ranges()
        from prefdata.train.lora import validate_lora_fields

        validate_lora_fields(self)
        if self.save_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"save_dtype must be one of float32, bfloat16, float16; got {self.save_dtype!r}")
        from prefdata.llm.hardware import train_bf16, trains_on_cpu

        if self.bf16 is None:
            self.bf16 = not self.fp16 and train_bf16(self.use_cpu)
        if self.bf16 and trains_on_cpu(self.use_cpu):
            self.use_cpu = True  # transformers refuses bf16 on a CPU unless told it trains there
        super().__post_init__()

    def _check_ranges(self) -> None:
        """Out-of-range values fail here, with the field's name, before any model is loaded."""
        import math

        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"{name} must be {rule} (got {getattr(self, name)!r})")

        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise bad("learning_rate", "a positive number, e.g. 5e-7")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "ref_batch_size", "max_prompt_length", "max_length"):  # fmt: skip
            if getattr(self, name) < 1:
                raise bad(name, "at least 1")
        if self.max_steps == 0 or self.max_steps < -1:
            raise bad("max_steps", "a positive number of steps (or -1 for whole epochs)")
        if not self.num_train_epochs > 0:
            raise bad("num_train_epochs", "positive")
        for name in ("alpha", "lambda_", "bcr_budget", "warmup_steps", "weight_decay", "logps_chunk_tokens"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise bad(name, "zero or positive")
        if not abs(self.mrpo_eta) < 1:
            raise bad("mrpo_eta", "between -1 and 1 (a relative clipping range)")
        if self.mrpo_weights is not None and (
            any(w < 0 for w in self.mrpo_weights) or abs(sum(self.mrpo_weights) - 1) > 1e-6
        ):
            raise bad("mrpo_weights", "non-negative and sum to 1")
        for name in ("seed", "data_seed"):  # transformers seeds numpy and torch with them only once training starts
            value = getattr(self, name)
            if value is not None and not 0 <= value <= SEED_MAX:
                raise bad(name, f"in [0, {SEED_MAX}]")

    def loss_kwargs(self) -> dict:
        """The hyperparameters `preference_loss` takes."""
        return {
            "beta": self.beta,
            "alpha": self.alpha,
            "lambda_": self.lambda_,
            "simpo_gamma": self.simpo_gamma,
            "bcr_budget": self.bcr_budget,
            "mrpo_eta": self.mrpo_eta,
            "mrpo_weights": self.mrpo_weights,
            "mrpo_weight_mapping": self.mrpo_weight_mapping,
        }
