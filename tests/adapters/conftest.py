import pytest
import torch

from asymlora.models import tiny_llama


@pytest.fixture
def tiny():
    """A fresh tiny Llama (hidden 32, 2 layers) with fixed weights."""
    return tiny_llama(seed=0)


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (2, 7), generator=g)


def randomise_up_projections(model, generator_seed=0):
    """Give the zero-initialised factors values, so that adapters actually change the output."""
    g = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("_B.", "_B2.", "_A2.", "lora_B.")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def randomise_accumulators(model, generator_seed=0):
    """Give the decomposed layer's untrained accumulators (B0 / A0) values, as after a few rounds."""
    from asymlora.adapters import iter_adapter_layers

    g = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for _, layer in iter_adapter_layers(model):
            for acc in (getattr(layer, "declora_B0", {}), getattr(layer, "declora_A0", {})):
                for k in acc:
                    acc[k].copy_(torch.randn(acc[k].shape, generator=g) * 0.1)
