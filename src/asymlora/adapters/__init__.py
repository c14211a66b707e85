"""Adapters: the maths of each method on one linear layer, and the bridge that makes them PEFT methods."""

import logging

# bitsandbytes (imported by PEFT when installed) warns on every import on AVX512-BF16 CPUs that an
# optional kernel would have to be fetched from the Hugging Face hub; we never fetch it, and its
# own CPU kernels serve. Keep its genuine errors.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import ALoRAConfig, DecomposedLoRAConfig, HydraLoRAConfig, MoSLoRAConfig  # noqa: E402
from .layer import (  # noqa: E402
    AdapterLayer,
    ALoRALayer,
    DecomposedLayer,
    HydraLoRALayer,
    MoSLoRALayer,
    RoutedLayer,
    StaticWeightError,
)
from .registry import register_with_peft  # noqa: E402

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
