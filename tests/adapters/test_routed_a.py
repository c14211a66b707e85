"""ALoRA's one-node path (`adapters/routed_a.py`) against an expert-by-expert reference and against
the generic autograd path: outputs and every gradient, with dropout on, and gradcheck in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import asymlora
from asymlora.adapters.layer import ALoRALayer, RoutedLayer
from asymlora.adapters.routed_a import RoutedAFunction


class One(nn.Module):
    def __init__(self, d_in: int = 12, d_out: int = 10) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


def alora_layer(dropout: float, dtype: torch.dtype = torch.float32, n: int = 3, r: int = 4) -> ALoRALayer:
    torch.manual_seed(0)
    model = asymlora.get_peft_model(One().to(dtype), asymlora.ALoRAConfig(
        r=r, lora_alpha=2 * r, num_experts=n, lora_dropout=dropout, target_modules=["q_proj"]))
    layer = model.base_model.model.q_proj
    with torch.no_grad():  # B starts at zero: give it values so that every gradient is non-trivial
        layer.alora_B["default"].normal_()
    layer.train()
    return layer


def reference(x, noise, A, W_g, B, s, n, r):
    """s B sum_i softmax(W_g x)_i A_i (x * noise), one expert at a time."""
    gates = torch.softmax(x @ W_g.t(), -1)
    xd = x * noise
    mixed = sum(gates[..., i:i + 1] * (xd @ A[i * r:(i + 1) * r].t()) for i in range(n))
    return s * mixed @ B.t()


def grads(out, tensors):
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)  # a loss whose gradient is not uniform
    return torch.autograd.grad((out * weights).sum(), tensors)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_path_equals_the_expert_by_expert_reference_and_the_generic_path(dropout):
    layer = alora_layer(dropout)
    n, r, s = 3, 4, layer.scaling["default"]
    A, W_g, B = layer.alora_A["default"], layer.alora_router["default"], layer.alora_B["default"]
    x = torch.randn(2, 5, 12, requires_grad=True)
    assert layer._fused("default", x)

    torch.manual_seed(7)
    fused = layer.adapter_output("default", x)
    g_fused = grads(fused, [x, A, W_g, B])
    torch.manual_seed(7)  # the mask the fused path drew: Bernoulli(1 - p) / (1 - p), as F.dropout on the CPU
    noise = torch.empty_like(x).bernoulli_(1 - dropout).div_(1 - dropout) if dropout else torch.ones_like(x)
    ref = reference(x, noise, A, W_g, B, s, n, r)
    g_ref = grads(ref, [x, A, W_g, B])
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    original = RoutedLayer._fused
    try:
        RoutedLayer._fused = lambda self, name, x: False
        torch.manual_seed(7)
        generic = layer.adapter_output("default", x)
        g_generic = grads(generic, [x, A, W_g, B])
    finally:
        RoutedLayer._fused = original
    torch.testing.assert_close(fused, generic, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_fused, g_generic):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_layer_forward_adds_into_the_base_output_as_the_generic_path_does(dropout):
    """The layer's forward adds the adapter inside its B GEMM (base passed in): the output and every
    gradient, the base weight's and the input's included, equal the generic path's."""
    layer = alora_layer(dropout)
    layer.base_layer.weight.requires_grad_(True)   # the base output's gradient must flow too
    params = [layer.base_layer.weight, layer.alora_A["default"], layer.alora_router["default"], layer.alora_B["default"]]
    x = torch.randn(2, 5, 12, requires_grad=True)
    runs = []
    original = RoutedLayer._fused
    for fused in (True, False):
        if not fused:
            RoutedLayer._fused = lambda self, name, x: False
        try:
            torch.manual_seed(7)
            out = layer(x)
            runs.append((out, grads(out, [x, *params])))
        finally:
            RoutedLayer._fused = original
    (out_f, g_f), (out_g, g_g) = runs
    torch.testing.assert_close(out_f, out_g, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_f, g_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_path_passes_gradcheck_in_float64():
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    A = torch.randn(3 * 2, 5, dtype=torch.float64, requires_grad=True)
    W_g = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    B = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    noise = torch.empty_like(x).bernoulli_(0.7).div_(0.7)
    base = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    for mask in (None, noise):
        assert torch.autograd.gradcheck(
            lambda x, A, W_g, B: RoutedAFunction.apply(x, A, W_g, B, mask, 0.5, torch.float64)[0], (x, A, W_g, B))
        assert torch.autograd.gradcheck(
            lambda x, A, W_g, B, base: RoutedAFunction.apply(x, A, W_g, B, mask, 0.5, torch.float64, base)[0],
            (x, A, W_g, B, base))


def test_generic_path_where_the_fused_one_does_not_apply():
    layer = alora_layer(0.0)
    x = torch.randn(2, 3, 12)
    with torch.no_grad():
        assert not layer._fused("default", x)       # inference: nothing to save for a backward
    assert not layer._fused("default", x.double())  # input and adapter in different dtypes
    empty = torch.randn(2, 0, 12, requires_grad=True)
    assert not layer._fused("default", empty)       # no tokens
    assert layer(empty).shape == (2, 0, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layer._fused("default", x)       # mixed precision: autocast's casts stay autograd's
    layer.set_fixed_gate("default", [0.2, 0.3, 0.5])
    assert not layer._fused("default", x)           # a fixed gate: no router runs
    recorded = []
    layer.set_fixed_gate("default", None)
    layer.gate_sink = lambda lyr, name, gates: recorded.append(gates)
    layer.adapter_output("default", x)              # the fused path still hands its gates to recorders
    assert recorded and recorded[0].shape == (2, 3, 3)
    torch.testing.assert_close(recorded[0].sum(-1), torch.ones(2, 3))
