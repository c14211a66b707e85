"""Adapter configurations, with PEFT's field names so that a LoraConfig user feels at home.

Each config is a `peft.PeftConfig`: it serialises to `adapter_config.json` and is found again by
`peft.PeftConfig.from_pretrained` once `asymlora` is imported (see `asymlora.adapters.registry`).
Each config class names its method once (`method`); the PeftType member is made from that name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch
from peft.config import PeftConfig
from peft.utils.peft_types import PeftType


def peft_type(method: str) -> PeftType:
    """The PeftType member of one of our methods, created on first use.

    PEFT's `register_peft_method` accepts only names already in its closed `PeftType` enum, so we
    add our members to that enum (the very object PEFT looks names up in)."""
    key = f"ASYMLORA_{method.upper()}"
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_ = key
    member._value_ = key
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, key, member)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    return member


def check_gate(gate: Any, n: int, what: str = "gate") -> torch.Tensor:
    """`gate` as a float32 vector of n finite, non-negative weights summing to 1 (a softmax's output)."""
    g = torch.as_tensor(gate, dtype=torch.float32).detach().flatten().cpu()
    shown = [round(float(w), 6) for w in g]
    if g.numel() != n:
        raise ValueError(f"{what} has {g.numel()} weights but the adapter has {n} experts")
    if not torch.isfinite(g).all():
        raise ValueError(f"{what} {shown} contains NaN or Inf")
    if (g < 0).any() or abs(float(g.sum()) - 1.0) > 1e-4:
        raise ValueError(f"{what} must be non-negative weights summing to 1, got {shown} (sum {float(g.sum()):g})")
    return g


@dataclass
class _LowRankConfig(PeftConfig):
    """Fields every asymlora adapter shares: the usual LoRA knobs."""

    method: ClassVar[str]  # our name of the method; its PeftType is ASYMLORA_<METHOD>

    r: int = field(default=8, metadata={"help": "Rank of each low-rank factor."})
    lora_alpha: float = field(default=16, metadata={"help": "Scaling numerator: the update is scaled by lora_alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input (the router reads x undropped)."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names (suffix match) or one regex (full match), as in PEFT's LoraConfig."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex to leave untouched."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules trained fully and saved with the adapter."}
    )
    init_seed: Optional[int] = field(
        default=None,
        metadata={"help": "Seed for the adapter's random draws (mixed with the module and adapter name); "
                          "None uses torch's global generator."},
    )
    init_weights: bool = field(
        default=True, metadata={"help": "Zero the up-projection so the adapted model starts equal to the base."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        _require(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}")
        _require(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        _require(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        self.peft_type = peft_type(self.method)

    @classmethod
    def from_user_file(cls, path: str | Path) -> "_LowRankConfig":
        """Strict loader for user-written config files: unknown keys are an error, not silently dropped."""
        from ..files import read_settings

        data = read_settings(path, "config file", fmt="json")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object of settings, got {type(data).__name__}")
        return cls.from_dict_strict(data, source=str(path))

    @classmethod
    def from_dict_strict(cls, data: dict[str, Any], source: str = "config") -> "_LowRankConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k not in ("peft_type", "auto_mapping", "peft_version")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys for {cls.__name__}: {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


@dataclass
class _RoutedConfig(_LowRankConfig):
    num_experts: int = field(default=3, metadata={"help": "Number of routed experts n."})
    fixed_gate: Optional[list[float]] = field(
        default=None,
        metadata={"help": "Use this gate vector instead of the router (enables merging); None routes per token."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.num_experts, int) and self.num_experts >= 1,
                 f"num_experts must be an integer >= 1, got {self.num_experts!r}")
        if self.fixed_gate is not None:
            self.fixed_gate = check_gate(self.fixed_gate, self.num_experts, "fixed_gate").tolist()


@dataclass
class ALoRAConfig(_RoutedConfig):
    """ALoRA: n routed A experts, one shared B. y = W0 x + s * B * sum_i softmax(W_g x)_i A_i x."""

    method: ClassVar[str] = "alora"


@dataclass
class HydraLoRAConfig(_RoutedConfig):
    """HydraLoRA: one shared A, n routed B heads. The mirror image of ALoRA."""

    method: ClassVar[str] = "hydralora"


@dataclass
class MoSLoRAConfig(_LowRankConfig):
    """MoSLoRA: B M A with a trainable r x r mixer M; a static update, so it merges."""

    method: ClassVar[str] = "moslora"


@dataclass
class DecomposedLoRAConfig(_LowRankConfig):
    """Heterogeneous Fed-ALoRA layer: dW = (B0 + B2 B1) M A (shared_side "B"), or its mirror
    dW = B M (A0 + A1 A2) (shared_side "A", FedSA-LoRA*). B0 / A0 is an untrained accumulator of
    width d_m that every client has in the same shape, whatever its own rank r."""

    intermediate_dim: int = field(default=16, metadata={"help": "d_m, the width shared by every client."})
    shared_side: str = field(default="B", metadata={"help": "'B' for Fed-ALoRA, 'A' for the mirrored FedSA-LoRA*."})
    method: ClassVar[str] = "declora"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.intermediate_dim, int) and self.intermediate_dim > 0,
                 f"intermediate_dim must be a positive integer, got {self.intermediate_dim!r}")
        _require(self.shared_side in ("A", "B"), f"shared_side must be 'A' or 'B', got {self.shared_side!r}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
