"""Adapters: the maths of each method on one linear layer, and the bridge that makes them PEFT methods."""

from .config import ALoRAConfig, DecomposedLoRAConfig, HydraLoRAConfig, MoSLoRAConfig
from .layer import (
    AdapterLayer,
    ALoRALayer,
    DecomposedLayer,
    HydraLoRALayer,
    MoSLoRALayer,
    RoutedLayer,
    StaticWeightError,
)
from .registry import register_with_peft

register_with_peft()

from .inspect import iter_adapter_layers, record_gates  # noqa: E402

__all__ = [
    "ALoRAConfig",
    "HydraLoRAConfig",
    "MoSLoRAConfig",
    "DecomposedLoRAConfig",
    "AdapterLayer",
    "RoutedLayer",
    "ALoRALayer",
    "HydraLoRALayer",
    "MoSLoRALayer",
    "DecomposedLayer",
    "StaticWeightError",
    "iter_adapter_layers",
    "record_gates",
]
