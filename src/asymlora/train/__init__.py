"""Multi-task fine-tuning on Transformers' Trainer, the method factory, and the comparison driver."""

from __future__ import annotations

from .config import ConfigError, TrainConfig
from .methods import DEFAULT_TARGETS, METHOD_LABELS, METHODS, make_peft_config
from .trainer import (
    AdaLoraAllocationCallback,
    CheckpointMismatchError,
    MultiTaskTrainer,
    TrainResult,
    heldout_loss,
    load_trained,
    read_run,
    train,
)

__all__ = [
    "ConfigError",
    "TrainConfig",
    "DEFAULT_TARGETS",
    "METHOD_LABELS",
    "METHODS",
    "make_peft_config",
    "AdaLoraAllocationCallback",
    "CheckpointMismatchError",
    "MultiTaskTrainer",
    "TrainResult",
    "heldout_loss",
    "load_trained",
    "read_run",
    "train",
]
