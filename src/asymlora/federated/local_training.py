"""A client's local training in a round: `asymlora train`'s own core (`train.trainer.fit_features`,
Transformers' Trainer) on the client's live model, as FlowerTune's clients run SFTTrainer.

Mixed precision, packing, the chunked loss, compile, gradient checkpointing, the lr schedule and
`report_to` come from the federated config's `training` section, which has the keys of a training
config. What a round changes: a fresh optimiser and schedule per round, no checkpoint (the client
keeps its own state), only the method's trainable tensors require grad, and the seed is the
client's per-round seed, so a round trained again (a resumed run) is bit for bit the same. The
process's random generators are restored afterwards: the Trainer seeds them globally.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..train.config import TrainConfig
from ..train.trainer import fit_features
from .keys import describe_keys

__all__ = ["TrainStats", "local_train", "trainer_seed"]


@dataclass
class TrainStats:
    """One phase of a client's round: optimiser steps, mean training loss, seconds, and the
    Trainer's log history (the loss every `logging_steps`)."""

    steps: int
    loss: float
    seconds: float
    log_history: list[dict[str, Any]] = field(default_factory=list)


def trainer_seed(seed: int) -> int:
    """The Trainer seeds numpy too, which takes 32 bits: a 63-bit round seed is folded to 31."""
    return int(seed) % (2**31 - 1)


def _reports(config: TrainConfig) -> bool:
    targets = [config.report_to] if isinstance(config.report_to, str) else list(config.report_to)
    return any(t not in ("none", "") for t in targets)


def local_train(model: torch.nn.Module, tokenizer: Any, features: Sequence[Mapping[str, Any]],
                trainable: Sequence[str], training: TrainConfig, *, seed: int, log_dir: Path) -> TrainStats:
    """Train the named parameters of `model` (only those) on `features`; the model is left in eval
    mode with nothing requiring grad. `log_dir` takes what `report_to` writes; without a report the
    Trainer's output directory is a temporary one."""
    named = dict(model.named_parameters())
    missing = [k for k in trainable if k not in named]
    if missing:
        raise KeyError(f"trainable keys not among the model's parameters: {describe_keys(missing)}")
    if not trainable:
        raise ValueError("the method trains no parameter of this model")
    if not features:
        raise ValueError("no training examples left after tokenisation (all prompts exceed cutoff_len?)")
    wanted = set(trainable)
    for name, p in named.items():
        p.requires_grad_(name in wanted)
    config = training.replace(seed=trainer_seed(seed))
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(
                devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []))
            out = log_dir if _reports(config) else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            fit = fit_features(model, tokenizer, features, config, out, save_checkpoints=False, print_logs=False)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        model.eval()
        for p in named.values():
            p.requires_grad_(False)
    return TrainStats(fit.global_step, fit.loss, fit.seconds, fit.log_history)
