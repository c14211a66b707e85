"""One factory for every method the paper compares, at its equal adapter budgets by default.

SPEC §1: ALoRA and HydraLoRA with n = 3, r = 8; LoRA, LoHa and MoSLoRA with r = 16; AdaLoRA r = 8;
alpha = 2r everywhere. LoRA, LoHa and AdaLoRA are PEFT's own; the routed adapters and MoSLoRA are ours.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence, Union

from peft import AdaLoraConfig, LoHaConfig, LoraConfig, PeftConfig

from ..adapters import ALoRAConfig, HydraLoRAConfig, MoSLoRAConfig

__all__ = ["METHODS", "METHOD_LABELS", "DEFAULT_TARGETS", "make_peft_config", "method_of_config",
           "parse_targets"]

DEFAULT_TARGETS = ("q_proj", "o_proj")  # the paper's commonsense / math targets (SPEC §4)

METHODS: dict[str, type[PeftConfig]] = {
    "lora": LoraConfig,
    "alora": ALoRAConfig,
    "hydralora": HydraLoRAConfig,
    "moslora": MoSLoRAConfig,
    "loha": LoHaConfig,
    "adalora": AdaLoraConfig,
}

# The names the paper's tables use.
METHOD_LABELS = {"lora": "LoRA", "alora": "ALoRA", "hydralora": "HydraLoRA", "moslora": "MoSLoRA",
                 "loha": "LoHa", "adalora": "AdaLoRA"}

_DEFAULT_RANK = {"lora": 16, "alora": 8, "hydralora": 8, "moslora": 16, "loha": 16, "adalora": 8}
_ROUTED = ("alora", "hydralora")


def parse_targets(targets: Union[str, Sequence[str]]) -> Union[str, list[str]]:
    """Module names as a list; "q_proj,o_proj" is split, anything with regex syntax stays a regex
    (PEFT reads a plain string as a full-match regex)."""
    if isinstance(targets, str):
        if re.fullmatch(r"[\w.]+(\s*,\s*[\w.]+)*", targets.strip()):
            return [t.strip() for t in targets.split(",")]
        return targets
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules must be non-empty module names, got {targets!r}")
    return targets


def make_peft_config(method: str, **overrides: Any) -> PeftConfig:
    """The PEFT config of `method` at the paper's budget, with `overrides` applied.

    Common keys work for every method: `r`, `lora_alpha` (LoHa's `alpha`), `lora_dropout`,
    `target_modules`; `num_experts` only for the routed methods; `total_step` is required by
    AdaLoRA (the trainer fills it in). Changing `r` alone keeps alpha = 2r. For AdaLoRA, `r` is
    the target (final average) rank and the initial rank is 1.5 r, PEFT's default ratio.
    Any other key is passed to the config class; an unknown one is an error naming it.
    """
    key = method.lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {sorted(METHODS)}")
    cls = METHODS[key]
    o = dict(overrides)
    r = o.pop("r", _DEFAULT_RANK[key])
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"{key}: r must be a positive integer, got {r!r}")
    alpha = o.pop("lora_alpha", o.pop("alpha", 2 * r))
    targets = parse_targets(o.pop("target_modules", DEFAULT_TARGETS))
    if "num_experts" in o and key not in _ROUTED:
        raise ValueError(f"{key}: num_experts applies only to the routed methods {list(_ROUTED)}")
    kwargs: dict[str, Any] = {"target_modules": targets, "task_type": o.pop("task_type", "CAUSAL_LM")}
    if key == "loha":
        dropout = o.pop("lora_dropout", None)
        if dropout:  # LoHa has no input dropout; module_dropout is the nearest knob, and it differs
            raise ValueError("loha: lora_dropout is not a LoHa option; use rank_dropout or module_dropout")
        kwargs.update(r=r, alpha=alpha)
    elif key == "adalora":
        if o.get("total_step") is None:
            raise ValueError("adalora: total_step (the number of optimiser steps) is required")
        kwargs.update(target_r=r, init_r=o.pop("init_r", int(math.ceil(1.5 * r))), r=r, lora_alpha=alpha,
                      lora_dropout=o.pop("lora_dropout", 0.05))
    else:
        kwargs.update(r=r, lora_alpha=alpha, lora_dropout=o.pop("lora_dropout", 0.05))
        if key in _ROUTED:
            kwargs["num_experts"] = o.pop("num_experts", 3)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(o) - known)
    if unknown:
        raise ValueError(f"{key}: unknown option(s) {unknown} for {cls.__name__}")
    kwargs.update(o)
    return cls(**kwargs)


def method_of_config(config: PeftConfig) -> str:
    """Our method name for a PEFT config (the inverse of make_peft_config), or the peft_type."""
    for name, cls in METHODS.items():
        if type(config) is cls:
            return name
    return str(getattr(config.peft_type, "value", config.peft_type)).lower()
