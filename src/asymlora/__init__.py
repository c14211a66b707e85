"""asymlora: multi-LoRA fine-tuning with asymmetric parameter sharing (ALoRA, Fed-ALoRA).

Importing the package registers its adapters with PEFT, so `peft.get_peft_model` and
`peft.PeftModel.from_pretrained` accept them.
"""

from .adapters import ALoRAConfig, DecomposedLoRAConfig, HydraLoRAConfig, MoSLoRAConfig
from .adapters.export import export_lora, mean_gates
from .adapters.registry import get_peft_model, load_adapter

__version__ = "0.1.0"

__all__ = [
    "ALoRAConfig",
    "HydraLoRAConfig",
    "MoSLoRAConfig",
    "DecomposedLoRAConfig",
    "get_peft_model",
    "load_adapter",
    "export_lora",
    "mean_gates",
]
