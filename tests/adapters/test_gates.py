"""Gates: computed in one place, saved when fixed, measured right; seeds, dropout and float64."""

import peft
import pytest
import torch
from torch import nn

from asymlora import ALoRAConfig, HydraLoRAConfig, mean_gates
from asymlora.adapters import iter_adapter_layers
from asymlora.adapters.layer import layer_generator
from asymlora.adapters.model import ALoRALinear, HydraLoRALinear
from asymlora.models import tiny_llama

from .conftest import randomise_up_projections
from .test_contracts import logits

ROUTED = pytest.mark.parametrize("config_cls", [ALoRAConfig, HydraLoRAConfig])


@ROUTED
def test_fixed_gates_are_saved_and_loaded_per_layer(tmp_path, ids, config_cls):
    model = peft.get_peft_model(tiny_llama(seed=0), config_cls(r=4, num_experts=3, target_modules=["q_proj", "o_proj"]))
    randomise_up_projections(model, 1)
    model.eval()
    gates = {}
    for i, (name, layer) in enumerate(iter_adapter_layers(model)):
        gates[name] = torch.softmax(torch.tensor([i, -i, 0.5 * i]), 0)
        layer.set_fixed_gate("default", gates[name])
    expected = logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(tiny_llama(seed=0), str(tmp_path), is_trainable=True)
    for name, layer in iter_adapter_layers(reloaded):
        assert torch.equal(layer.fixed_gate["default"], gates[name])
        assert not layer.router_weight("default").requires_grad
    assert torch.equal(logits(reloaded.eval(), ids), expected)
    # and a layer saved while routing loads routing again
    layer = next(layer for _, layer in iter_adapter_layers(model))
    layer.set_fixed_gate("default", None)
    model.save_pretrained(tmp_path / "routed")
    again = peft.PeftModel.from_pretrained(tiny_llama(seed=0), str(tmp_path / "routed"))
    assert next(layer for _, layer in iter_adapter_layers(again)).fixed_gate["default"] is None


@ROUTED
def test_a_fixed_gate_freezes_the_router_and_routing_again_unfreezes_it(tiny, ids, config_cls):
    model = peft.get_peft_model(tiny, config_cls(r=4, num_experts=3, target_modules=["q_proj"], fixed_gate=[0.2, 0.3, 0.5]))
    layers = [layer for _, layer in iter_adapter_layers(model)]
    assert not any(layer.router_weight("default").requires_grad for layer in layers)
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    layers[0].set_fixed_gate("default", None)
    assert layers[0].router_weight("default").requires_grad
    assert not layers[1].router_weight("default").requires_grad


@ROUTED
def test_mean_gates_of_a_fixed_gate_is_that_gate(tiny, config_cls):
    model = peft.get_peft_model(tiny, config_cls(r=4, num_experts=3, target_modules=["q_proj"], fixed_gate=[0.2, 0.3, 0.5]))
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    gates = mean_gates(model, [{"input_ids": ids, "attention_mask": mask}])
    assert len(gates) == 2
    for g in gates.values():
        torch.testing.assert_close(g, torch.tensor([0.2, 0.3, 0.5]))


@ROUTED
def test_mean_gates_counts_real_tokens_only(tiny, config_cls):
    """The mean over the non-padding tokens, against the gates computed by hand."""
    model = peft.get_peft_model(tiny, config_cls(r=4, num_experts=3, target_modules=["q_proj"]))
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    layer = next(layer for _, layer in iter_adapter_layers(model))
    seen = []
    layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    gates = mean_gates(model, [{"input_ids": ids, "attention_mask": mask}])
    by_hand = torch.softmax(seen[0] @ layer.router_weight("default").detach().T, -1)[mask.bool()].mean(0)
    torch.testing.assert_close(next(iter(gates.values())), by_hand)


@pytest.mark.parametrize("cls,config_cls", [(ALoRALinear, ALoRAConfig), (HydraLoRALinear, HydraLoRAConfig)])
@pytest.mark.parametrize("fixed", [None, [0.2, 0.3, 0.5]])
def test_a_float64_layer_passes_gradcheck(cls, config_cls, fixed):
    torch.manual_seed(0)
    layer = cls.wrap(nn.Linear(6, 5), "default", config_cls(r=2, num_experts=3, lora_dropout=0.0, init_weights=False,
                                                            fixed_gate=fixed)).double().eval()
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert layer.gate(x, "default").dtype == torch.float64
    params = [p for p in layer.parameters() if p.requires_grad]

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(layer, dict(zip(
                [n for n, p in layer.named_parameters() if p.requires_grad], ps))):
            return layer(x)

    assert torch.autograd.gradcheck(f, (x, *params))


def test_one_seed_gives_each_adapter_its_own_draw(tiny):
    model = peft.get_peft_model(tiny, ALoRAConfig(r=4, num_experts=2, init_seed=3, target_modules=["q_proj"]))
    model.add_adapter("second", ALoRAConfig(r=4, num_experts=2, init_seed=3, target_modules=["q_proj"]))
    layer = next(layer for _, layer in iter_adapter_layers(model))
    assert not torch.equal(layer.experts_A("default"), layer.experts_A("second"))
    # the default adapter keeps the draws of runs seeded before adapters were told apart
    assert layer_generator(3, "k").initial_seed() == layer_generator(3, "k", "default").initial_seed()
    assert layer_generator(3, "k").initial_seed() != layer_generator(3, "k", "second").initial_seed()


@pytest.mark.parametrize("config_cls", [ALoRAConfig, HydraLoRAConfig])
def test_an_adapter_added_after_eval_has_no_dropout(tiny, ids, config_cls):
    model = peft.get_peft_model(tiny, config_cls(r=4, num_experts=3, target_modules=["q_proj"]))
    model.eval()
    model.add_adapter("b", config_cls(r=4, num_experts=3, lora_dropout=0.5, init_weights=False,
                                      target_modules=["q_proj", "v_proj"]))
    model.set_adapter("b")
    assert not any(m.training for m in model.modules())
    assert torch.equal(logits(model, ids), logits(model, ids))
    fresh = peft.get_peft_model(tiny_llama(seed=0).eval(), config_cls(r=4, num_experts=3, lora_dropout=0.5,
                                                                       init_weights=False, target_modules=["q_proj"]))
    assert torch.equal(logits(fresh, ids), logits(fresh, ids))
