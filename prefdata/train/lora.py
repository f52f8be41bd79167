"""LoRA / QLoRA for `AIPOTrainer` (peft): loading the policy, the adapter-free reference, and what is saved.

Why: a 7-8B model does not fit a full fine-tune on one 80 GB GPU (float32 weights alone are 32 GB). With LoRA
the base stays frozen in bf16 (or 4-bit NF4 with QLoRA) and only the low-rank adapters get gradients and
optimizer state. The reference model is the same network with its adapters disabled, so no second copy of the
weights is ever loaded; its log-probs are precomputed once, as for a full fine-tune.

Output layout of one stage (`output_dir`):
- `lora_merge=True` (default): `output_dir/` is the merged bf16 model (vLLM and transformers load it as any
  model), `output_dir/adapter/` the adapter trained in this stage (relative to the stage's starting policy).
- `lora_merge=False`: `output_dir/` is a peft adapter on the ORIGINAL base model (`base_model_name_or_path`),
  which vLLM serves with `enable_lora` and a `LoRARequest`. When the stage started from such an adapter (round
  t of `iterate`), the fresh adapter is trained on the merged policy of round t-1 and the saved adapter is the
  exact sum of both: ranks are concatenated (B'A' = s1·B1A1 + s2·B2A2), so the base weights are never rewritten.
  `output_dir/adapter/` still holds this stage's own adapter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from prefdata.errors import PrefdataError

logger = logging.getLogger(__name__)

ADAPTER_FOLDER = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's `max_lora_rank` choices


# ---------------------------------------------------------------- settings


def validate_lora_fields(cfg: Any) -> None:
    """Reject inconsistent LoRA / dtype settings (called from `AIPOConfig.__post_init__`; ValueError -> exit 2)."""
    if cfg.dtype not in ("auto", *DTYPES):
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {cfg.dtype!r}")
    if cfg.lora_r < 0:
        raise ValueError("lora_r must be >= 0 (0 = full fine-tune)")
    if cfg.lora_r == 0:
        if cfg.load_in_4bit:
            raise ValueError("load_in_4bit is QLoRA: it needs a LoRA rank, e.g. --lora-r 16")
        if not cfg.lora_merge:
            raise ValueError("--no-merge keeps only a LoRA adapter: it needs a LoRA rank, e.g. --lora-r 16")
    if cfg.lora_alpha is not None and cfg.lora_alpha <= 0:
        raise ValueError("lora_alpha must be positive")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ValueError("lora_dropout must be in [0, 1)")
    if cfg.load_in_4bit and cfg.dtype == "float32":
        raise ValueError("load_in_4bit computes in bfloat16 or float16; drop --dtype float32")


def weight_dtype(cfg: Any) -> torch.dtype:
    """Dtype of the loaded weights, as `prefdata.llm.hardware.train_weight_dtype` decides for this machine."""
    from prefdata.llm.hardware import train_weight_dtype

    return DTYPES[train_weight_dtype(cfg.dtype, cfg.lora_r, getattr(cfg, "use_cpu", False))]


def cache_tag(cfg: Any) -> str:
    """Suffix for reference-cache keys: reference log-probs from bf16 weights differ from float32 ones."""
    dtype = weight_dtype(cfg)
    tag = "" if dtype == torch.float32 else "-w" + str(dtype).removeprefix("torch.")
    return tag + ("-nf4" if cfg.load_in_4bit else "")


def check_4bit_available() -> None:
    """QLoRA needs bitsandbytes and a CUDA device; never fall back silently to a full-precision run."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise PrefdataError(
            "--load-in-4bit needs the bitsandbytes package and a CUDA GPU (pip install bitsandbytes); "
            "without them train LoRA on a bf16 base: drop --load-in-4bit"
        ) from e
    from prefdata.llm.hardware import cuda_available

    if not cuda_available():
        raise PrefdataError("--load-in-4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is visible: drop --load-in-4bit")


def is_adapter_dir(path: str | Path) -> bool:
    """A peft adapter folder (adapter_config.json, no model config.json)."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter folder was trained on."""
    data = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    base = data.get("base_model_name_or_path")
    if not base:
        raise PrefdataError(f"adapter {path} names no base model (base_model_name_or_path in {ADAPTER_CONFIG})")
    return str(base)


def vllm_lora_rank(path: str | Path) -> int:
    """The smallest `max_lora_rank` vLLM accepts for the adapter in `path`."""
    r = int(json.loads((Path(path) / ADAPTER_CONFIG).read_text())["r"])
    for choice in VLLM_LORA_RANKS:
        if choice >= r:
            return choice
    raise PrefdataError(f"adapter {path} has rank {r}, above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}; use the merged model")


# ---------------------------------------------------------------- loading


def load_plain(path: str, dtype: torch.dtype, **kwargs: Any) -> Any:
    """A causal LM from a model folder, or the merged model of a (base, adapter) folder.

    An adapter is merged in float32 and kept there, whatever `dtype`: vLLM serves that folder as base + B·A
    unmerged, and a merge rounded to bf16 lost most of a small update, so the reference the trainer used was
    not the model vLLM sampled (issue 19 §5)."""
    from transformers import AutoModelForCausalLM

    if not is_adapter_dir(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if kwargs.get("quantization_config") is not None:
        raise PrefdataError(f"{path} is a LoRA adapter: QLoRA cannot merge it into a 4-bit base; train from a merged model")
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(adapter_base(path), dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(base, path).merge_and_unload()


def load_policy(model_path: str, cfg: Any) -> Any:
    """The model to train: plain (full fine-tune) or wrapped with fresh LoRA adapters on a frozen base."""
    dtype = weight_dtype(cfg)
    kwargs: dict[str, Any] = {}
    if cfg.load_in_4bit:
        check_4bit_available()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": str(cfg.device)}  # this process's GPU (cuda:LOCAL_RANK under DDP)
    model = load_plain(model_path, dtype, **kwargs)
    return add_adapters(model, cfg) if cfg.lora_r > 0 else model


def add_adapters(model: Any, cfg: Any) -> Any:
    """Freeze `model` and add trainable LoRA adapters (B = 0, so the policy starts equal to the reference)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.tuners_utils import BaseTunerLayer

    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules) or "all-linear",  # peft's all-linear leaves out the LM head
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(cfg.seed)  # A's random init: reproducible, and the same in every process (DDP checks it)
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise PrefdataError(f"LoRA: {str(e).splitlines()[0]}; check --lora-target-modules") from e
    if cfg.logps_chunk_tokens > 0 and isinstance(peft_model.get_output_embeddings(), BaseTunerLayer):
        raise PrefdataError("LoRA on the LM head needs the plain logits path: add --logps-chunk-tokens 0 (YAML logps_chunk_tokens: 0)")
    return peft_model


def is_peft(model: Any) -> bool:
    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):
        inner = inner.module
    return hasattr(inner, "disable_adapter") and hasattr(inner, "peft_config")


@contextlib.contextmanager
def reference_mode(model: Any) -> Iterator[Any]:
    """The reference network: `model` itself, with its LoRA adapters disabled if it has any."""
    if is_peft(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


# ---------------------------------------------------------------- output


def adapter_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / ADAPTER_FOLDER


def finalize(output_dir: str | Path, policy_path: str, cfg: Any) -> dict[str, Any]:
    """After `trainer.save_model(adapter_dir(out))`: write the merged model (in `--save-dtype`), or the vLLM adapter,
    into `out`."""
    out = Path(output_dir)
    adapter = adapter_dir(out)
    _set_adapter_base(adapter, policy_path)
    info: dict[str, Any] = {"adapter": str(adapter), "base": policy_path, "merged": cfg.lora_merge}
    # a folder reused with --overwrite in the other mode must not keep the old kind of output beside the new one
    stale = ("adapter_config.json", "adapter_model.safetensors") if cfg.lora_merge else ("config.json", "generation_config.json")
    for name in stale:
        (out / name).unlink(missing_ok=True)
    if not cfg.lora_merge:
        for f in out.glob("model*.safetensors*"):
            f.unlink()
    if cfg.lora_merge:
        t0 = time.perf_counter()
        merge(policy_path, adapter, out, cfg.save_dtype)
        info["merge_seconds"] = round(time.perf_counter() - t0, 3)
        return info
    if is_adapter_dir(policy_path):
        concat_adapters(policy_path, adapter, out)
        info["base"] = adapter_base(policy_path)
    else:
        for f in adapter.iterdir():
            if f.is_file() and f.name != "training_args.bin":
                shutil.copy2(f, out / f.name)
    info["vllm_max_lora_rank"] = vllm_lora_rank(out)
    return info


def merge(policy_path: str, adapter: Path, out: Path, save_dtype: str = "float32") -> None:
    """Load the starting policy in float32, add the adapter to its weights, save model + tokenizer into `out` in
    `save_dtype`. A bf16 merge rounded away most of a small update before the next round trained from it."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = load_plain(policy_path, torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.to(DTYPES[save_dtype]).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)


def _set_adapter_base(adapter: Path, base: str) -> None:
    f = adapter / ADAPTER_CONFIG
    data = json.loads(f.read_text())
    data["base_model_name_or_path"] = base
    f.write_text(json.dumps(data, indent=2))


def _scale(conf: dict[str, Any]) -> float:
    if conf.get("rank_pattern") or conf.get("alpha_pattern"):
        raise PrefdataError("adapters with per-module rank/alpha patterns cannot be combined; use the merged model")
    r = conf["r"]
    return conf["lora_alpha"] / (r**0.5 if conf.get("use_rslora") else r)


def concat_adapters(first: str | Path, second: str | Path, out: str | Path) -> None:
    """Write one adapter equal to `first` followed by `second` (the sum of their weight updates), on `first`'s base.

    For every adapted module, ΔW = s1·B1A1 + s2·B2A2 = [s1·B1, s2·B2] · [A1; A2]: the ranks are concatenated and the
    scales folded into B, so the result has rank r1+r2 and scale 1 (alpha = r). A module adapted by only one of them
    gets zero rows/columns for the other.
    """
    from safetensors.torch import load_file, save_file

    first, second, out = Path(first), Path(second), Path(out)
    c1 = json.loads((first / ADAPTER_CONFIG).read_text())
    c2 = json.loads((second / ADAPTER_CONFIG).read_text())
    w1, w2 = load_file(first / ADAPTER_WEIGHTS), load_file(second / ADAPTER_WEIGHTS)
    s1, s2, r1, r2 = _scale(c1), _scale(c2), int(c1["r"]), int(c2["r"])
    modules = sorted({k.removesuffix(".lora_A.weight") for k in [*w1, *w2] if k.endswith(".lora_A.weight")})
    tensors: dict[str, torch.Tensor] = {}
    for m in modules:
        a1, b1 = w1.get(f"{m}.lora_A.weight"), w1.get(f"{m}.lora_B.weight")
        a2, b2 = w2.get(f"{m}.lora_A.weight"), w2.get(f"{m}.lora_B.weight")
        ref_a, ref_b = (a1, b1) if a1 is not None else (a2, b2)
        assert ref_a is not None and ref_b is not None
        if a1 is None or b1 is None:
            a1, b1 = ref_a.new_zeros(r1, ref_a.shape[1]), ref_b.new_zeros(ref_b.shape[0], r1)
        if a2 is None or b2 is None:
            a2, b2 = ref_a.new_zeros(r2, ref_a.shape[1]), ref_b.new_zeros(ref_b.shape[0], r2)
        dtype = torch.promote_types(a1.dtype, a2.dtype)
        tensors[f"{m}.lora_A.weight"] = torch.cat([a1.to(dtype), a2.to(dtype)]).contiguous()
        tensors[f"{m}.lora_B.weight"] = torch.cat([s1 * b1.to(dtype), s2 * b2.to(dtype)], dim=1).contiguous()
    extra = sorted(k for k in [*w1, *w2] if ".lora_A." not in k and ".lora_B." not in k)
    if extra:
        raise PrefdataError(f"cannot combine adapters that also train {extra[0]} (modules_to_save); use the merged model")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    targets = {m.rsplit(".", 1)[-1] for m in modules}
    conf = dict(c2, r=r1 + r2, lora_alpha=r1 + r2, use_rslora=False, target_modules=sorted(targets))
    conf["base_model_name_or_path"] = c1["base_model_name_or_path"]
    (out / ADAPTER_CONFIG).write_text(json.dumps(conf, indent=2))
    for f in second.iterdir():  # tokenizer files, chat template
        if f.is_file() and f.name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "training_args.bin", "README.md"):
            shutil.copy2(f, out / f.name)
