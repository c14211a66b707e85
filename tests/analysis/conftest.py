from __future__ import annotations

import pytest
import torch


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def adapted(method: str, seed: int = 0, dropout: float = 0.0, zero_b: bool = True, targets=("q_proj", "v_proj"),
            init_seed: int | None = 0):
    """A tiny Llama with an asymlora / PEFT adapter (B random unless zero_b, so every gradient is non-trivial)."""
    from peft import LoraConfig, get_peft_model

    from asymlora.adapters import ALoRAConfig, HydraLoRAConfig, MoSLoRAConfig

    common = dict(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(targets))
    if method == "alora":
        cfg = ALoRAConfig(num_experts=3, init_seed=init_seed, init_weights=zero_b, **common)
    elif method == "hydralora":
        cfg = HydraLoRAConfig(num_experts=3, init_seed=init_seed, init_weights=zero_b, **common)
    elif method == "moslora":
        cfg = MoSLoRAConfig(init_seed=init_seed, **common)
    elif method == "lora":
        cfg = LoraConfig(init_lora_weights=zero_b, **common)
    else:
        raise ValueError(method)
    return get_peft_model(tiny_llama(seed), cfg)


@pytest.fixture
def make_adapted():
    return adapted
