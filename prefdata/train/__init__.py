"""The bundled trainer: preference losses, `AIPOConfig`, `AIPOTrainer`, and `train()` for the CLI and `iterate`.

Heavy imports (torch, transformers) happen on first use of `AIPOConfig` / `AIPOTrainer`, not on import.
"""

from __future__ import annotations

from typing import Any

from prefdata.train.run import train

__all__ = ["AIPOConfig", "AIPOTrainer", "train"]


def __getattr__(name: str) -> Any:
    if name == "AIPOConfig":
        from prefdata.train.config import AIPOConfig

        return AIPOConfig
    if name == "AIPOTrainer":
        from prefdata.train.trainer import AIPOTrainer

        return AIPOTrainer
    raise AttributeError(name)
