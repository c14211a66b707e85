"""Merging routed adapters: all or nothing, and never at a gate other than the one merged."""

import peft
import pytest
import torch

from asymlora import ALoRAConfig, HydraLoRAConfig
from asymlora.adapters import StaticWeightError, iter_adapter_layers

from .conftest import randomise_up_projections
from .test_contracts import adapted, base_weights, logits

ROUTED = pytest.mark.parametrize("config_cls", [ALoRAConfig, HydraLoRAConfig])


@ROUTED
def test_a_layer_with_a_fixed_and_a_routed_adapter_refuses_to_merge_and_changes_nothing(tiny, config_cls):
    model = peft.get_peft_model(tiny, config_cls(r=4, num_experts=3, target_modules=["q_proj"], fixed_gate=[1, 0, 0]))
    model.add_adapter("routed", config_cls(r=4, num_experts=3, target_modules=["q_proj"]))
    randomise_up_projections(model, 2)
    layer = next(layer for _, layer in iter_adapter_layers(model))
    layer.set_adapter(["default", "routed"])
    w0 = layer.get_base_layer().weight.clone()
    with pytest.raises(StaticWeightError, match="'routed' routes each token"):
        layer.merge()
    assert torch.equal(layer.get_base_layer().weight, w0)
    assert layer.merged_adapters == [] and not layer.merged


@ROUTED
def test_a_model_whose_layers_cannot_all_merge_is_left_untouched(tiny, ids, config_cls):
    model = peft.get_peft_model(tiny, config_cls(r=4, num_experts=3, target_modules=["q_proj"]))
    randomise_up_projections(model, 2)
    model.eval()
    first = next(layer for _, layer in iter_adapter_layers(model))
    first.set_fixed_gate("default", [0.2, 0.3, 0.5])  # the second layer still routes per token
    expected, w0 = logits(model, ids), base_weights(model)
    for merge in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(StaticWeightError):
            merge()
        assert all(torch.equal(w, w0[n]) for n, w in base_weights(model).items())
        assert not any(layer.merged for _, layer in iter_adapter_layers(model))
        assert torch.equal(logits(model, ids), expected)


@ROUTED
def test_the_gate_of_a_merged_adapter_cannot_change_and_unmerge_restores_the_base(tiny, ids, config_cls):
    model = peft.get_peft_model(tiny, config_cls(r=4, num_experts=3, target_modules=["q_proj"], fixed_gate=[0.6, 0.4, 0]))
    randomise_up_projections(model, 2)
    w0 = base_weights(model)
    model.merge_adapter()
    layer = next(layer for _, layer in iter_adapter_layers(model))
    for gate in ([0, 0, 1], None):
        with pytest.raises(ValueError, match="'default' is merged into the base weights: unmerge it"):
            layer.set_fixed_gate("default", gate)
    assert layer.fixed_gate["default"].tolist() == pytest.approx([0.6, 0.4, 0])
    model.unmerge_adapter()
    for name, w in base_weights(model).items():
        torch.testing.assert_close(w, w0[name], rtol=0, atol=1e-6)
    layer.set_fixed_gate("default", [0, 0, 1])  # unmerged: allowed again
    assert layer.fixed_gate["default"].tolist() == [0, 0, 1]


def test_merging_twice_warns_and_adds_the_update_once(ids):
    model = adapted("alora")
    expected = logits(model, ids)
    model.merge_adapter()
    merged_w = base_weights(model)
    with pytest.warns(UserWarning, match="already merged"):
        model.merge_adapter()
    assert all(torch.equal(w, merged_w[n]) for n, w in base_weights(model).items())
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-5, atol=1e-5)
