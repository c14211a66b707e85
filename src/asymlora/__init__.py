"""asymlora: multi-LoRA fine-tuning with asymmetric parameter sharing (ALoRA, Fed-ALoRA)."""

__version__ = "0.1.0"
