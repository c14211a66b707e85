"""Tiny real models for the federated tests: a 2-layer Llama with grouped-query attention (so
v_proj is 32 -> 16 while q_proj is 32 -> 32, and d_in/d_out mix-ups show), wrapped in PEFT
LoRA or in the decomposed Fed-ALoRA layer, whose state dicts are what the algorithms receive."""

from __future__ import annotations

import warnings
from typing import Optional

import torch

TINY = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
        "num_hidden_layers": 2, "vocab_size": 100}
TARGETS = ["q_proj", "v_proj", "down_proj"]


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY))


def lora_model(rank: int, seed: int = 0, alpha: Optional[float] = None, adapters=("default",)):
    from peft import LoraConfig, get_peft_model

    warnings.filterwarnings("ignore")
    cfg = lambda: LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0,  # noqa: E731
                             target_modules=TARGETS)
    model = get_peft_model(tiny_llama(seed), cfg(), adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, cfg())
    return model


def lora_state(rank: int, seed: int = 0, fill_b: bool = True) -> dict[str, torch.Tensor]:
    """get_peft_model_state_dict of a tiny LoRA model, B filled with random values (as after training)."""
    from peft import get_peft_model_state_dict

    model = lora_model(rank, seed)
    sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    if fill_b:
        g = torch.Generator().manual_seed(seed + 100)
        for k in sd:
            if "lora_B" in k:
                sd[k] = torch.randn(sd[k].shape, generator=g)
    return sd


def decomposed_model(rank: int, dm: int, side: str = "B", seed: int = 0):
    from asymlora import DecomposedLoRAConfig, get_peft_model

    warnings.filterwarnings("ignore")
    cfg = DecomposedLoRAConfig(r=rank, lora_alpha=2 * rank, intermediate_dim=dm, shared_side=side,
                               target_modules=TARGETS, lora_dropout=0.0)
    return get_peft_model(tiny_llama(seed), cfg)


def decomposed_state(rank: int, dm: int, side: str = "B", seed: int = 0) -> dict[str, torch.Tensor]:
    """The decomposed layer's state, every factor (accumulator and zero-initialised one included)
    filled with random values, as in a client's state mid-run."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(decomposed_model(rank, dm, side, seed))
    g = torch.Generator().manual_seed(seed + 200)
    return {k: torch.randn(v.shape, generator=g) for k, v in sd.items()}
