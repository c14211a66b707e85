"""The maths of each layer against plain reference implementations written from SPEC §1."""

import math

import peft
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asymlora import ALoRAConfig, DecomposedLoRAConfig, HydraLoRAConfig, MoSLoRAConfig
from asymlora.adapters import StaticWeightError, iter_adapter_layers, record_gates
from asymlora.adapters.model import ALoRALinear, HydraLoRALinear

from .conftest import randomise_up_projections

ALL_CONFIGS = [
    lambda **kw: ALoRAConfig(r=4, num_experts=3, **kw),
    lambda **kw: HydraLoRAConfig(r=4, num_experts=3, **kw),
    lambda **kw: MoSLoRAConfig(r=4, **kw),
    lambda **kw: DecomposedLoRAConfig(r=4, intermediate_dim=6, shared_side="B", **kw),
    lambda **kw: DecomposedLoRAConfig(r=4, intermediate_dim=6, shared_side="A", **kw),
]


def reference_routed(x, experts_A, experts_B, W_g, s, routed_side):
    """Per-expert Python loop, exactly as written in the paper: no stacking, no fusion."""
    gates = torch.softmax(x @ W_g.T, dim=-1)
    out = 0
    n = W_g.shape[0]
    for i in range(n):
        if routed_side == "A":
            out = out + gates[..., i:i + 1] * (x @ experts_A[i].T @ experts_B[0].T)
        else:
            out = out + gates[..., i:i + 1] * (x @ experts_A[0].T @ experts_B[i].T)
    return s * out


def make_layer(cls, config, d_in=16, d_out=12, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out)
    layer = cls.wrap(base, "default", config)
    return layer


@pytest.mark.parametrize("make_config", ALL_CONFIGS)
def test_zero_init_output_equals_base_model(tiny, ids, make_config):
    with torch.no_grad():
        base_logits = tiny(ids).logits.clone()
    model = peft.get_peft_model(tiny, make_config(target_modules=["q_proj", "v_proj", "down_proj"]))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base_logits)


@pytest.mark.parametrize("cls,config_cls", [(ALoRALinear, ALoRAConfig), (HydraLoRALinear, HydraLoRAConfig)])
def test_router_gates_sum_to_one_per_token(cls, config_cls):
    layer = make_layer(cls, config_cls(r=4, num_experts=5, lora_dropout=0.0))
    x = torch.randn(3, 7, 16)
    g = layer.gate(x, "default")
    assert g.shape == (3, 7, 5)
    torch.testing.assert_close(g.sum(-1), torch.ones(3, 7))
    # gates depend on the token: not one constant vector for the whole batch
    assert (g[0, 0] - g[1, 3]).abs().max() > 1e-4
    # near uniform at init (kaiming router, small logits): high entropy on average
    entropy = -(g * g.log()).sum(-1).mean()
    assert entropy > 0.85 * math.log(5)


def test_alora_experts_differ_at_init_and_seed_is_reproducible():
    layer = make_layer(ALoRALinear, ALoRAConfig(r=4, num_experts=3, init_seed=7))
    A = layer.experts_A("default")
    assert A.shape == (3, 4, 16)
    for i in range(3):
        for j in range(i + 1, 3):
            assert (A[i] - A[j]).abs().max() > 1e-3
    bound = 1 / math.sqrt(16)
    assert A.abs().max() <= bound
    again = make_layer(ALoRALinear, ALoRAConfig(r=4, num_experts=3, init_seed=7), seed=123)
    assert torch.equal(again.experts_A("default"), A)
    other = make_layer(ALoRALinear, ALoRAConfig(r=4, num_experts=3, init_seed=8))
    assert not torch.equal(other.experts_A("default"), A)
    assert torch.count_nonzero(layer.experts_B("default")) == 0


def test_seeded_adapters_differ_between_layers(tiny):
    model = peft.get_peft_model(tiny, ALoRAConfig(r=4, num_experts=2, init_seed=3, target_modules=["q_proj"]))
    A = [layer.experts_A("default") for _, layer in iter_adapter_layers(model)]
    assert len(A) == 2 and not torch.equal(A[0], A[1])


@pytest.mark.parametrize("cls,config_cls,side", [(ALoRALinear, ALoRAConfig, "A"), (HydraLoRALinear, HydraLoRAConfig, "B")])
@pytest.mark.parametrize("shape", [(5, 16), (2, 5, 16)])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fast_path_equals_reference_in_values_and_gradients(cls, config_cls, side, shape, dropout):
    layer = make_layer(cls, config_cls(r=4, num_experts=3, lora_dropout=dropout, init_weights=False))
    layer.train()
    x = torch.randn(*shape, requires_grad=True)
    torch.manual_seed(11)
    fast = layer(x)
    grads_fast = torch.autograd.grad(fast.square().sum(), [x] + list(layer.parameters()), allow_unused=True)

    # reference: same parameters, per-expert loop, same dropout draw
    A = layer.experts_A("default").detach().clone().requires_grad_(True)
    B = layer.experts_B("default").detach().clone().requires_grad_(True)
    W_g = layer.router_weight("default").detach().clone().requires_grad_(True)
    base = layer.base_layer
    x2 = x.detach().clone().requires_grad_(True)
    torch.manual_seed(11)
    xd = layer.lora_dropout["default"](x2)
    gates = torch.softmax(x2 @ W_g.T, -1)
    out = 0
    for i in range(3):
        if side == "A":
            out = out + gates[..., i:i + 1] * (xd @ A[i].T @ B[0].T)
        else:
            out = out + gates[..., i:i + 1] * (xd @ A[0].T @ B[i].T)
    ref = base(x2) + layer.scaling["default"] * out
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    gx, gA, gB, gW = torch.autograd.grad(ref.square().sum(), [x2, A, B, W_g])
    names = [n for n, _ in layer.named_parameters()]
    by_name = dict(zip(names, grads_fast[1:]))
    torch.testing.assert_close(grads_fast[0], gx, rtol=1e-4, atol=1e-5)
    prefix = layer.prefix
    torch.testing.assert_close(by_name[f"{prefix}A.default"].view_as(gA), gA, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        by_name[f"{prefix}B.default"], gB.permute(1, 0, 2).reshape(B.shape[1], -1), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(by_name[f"{prefix}router.default"], gW, rtol=1e-4, atol=1e-5)


def test_eval_fused_gemm_equals_reference():
    layer = make_layer(ALoRALinear, ALoRAConfig(r=4, num_experts=3, lora_dropout=0.2, init_weights=False))
    layer.eval()
    x = torch.randn(4, 16)
    ref = layer.base_layer(x) + reference_routed(
        x, layer.experts_A("default"), layer.experts_B("default"), layer.router_weight("default"),
        layer.scaling["default"], "A")
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-6)


def test_alora_with_one_expert_and_no_router_is_exactly_lora(tiny, ids):
    import copy

    lora = peft.get_peft_model(copy.deepcopy(tiny), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                    target_modules=["q_proj", "v_proj"]))
    alora = peft.get_peft_model(tiny, ALoRAConfig(r=4, lora_alpha=8, num_experts=1, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj"]))
    randomise_up_projections(lora, 5)
    lora_layers = {n: m for n, m in lora.named_modules() if isinstance(m, peft.tuners.lora.Linear)}
    alora_layers = dict(iter_adapter_layers(alora))
    assert set(lora_layers) == set(alora_layers)
    for name, layer in alora_layers.items():
        assert layer.router_weight("default") is None  # the router is removed at n = 1
        with torch.no_grad():
            layer.alora_A["default"].copy_(lora_layers[name].lora_A["default"].weight)
            layer.alora_B["default"].copy_(lora_layers[name].lora_B["default"].weight)
    out_lora, out_alora = lora(ids).logits, alora(ids).logits
    torch.testing.assert_close(out_alora, out_lora, rtol=0, atol=1e-6)
    out_lora.sum().backward()
    out_alora.sum().backward()
    for name, layer in alora_layers.items():
        torch.testing.assert_close(layer.alora_B["default"].grad, lora_layers[name].lora_B["default"].weight.grad)
        torch.testing.assert_close(layer.alora_A["default"].grad, lora_layers[name].lora_A["default"].weight.grad)


@pytest.mark.parametrize("side", ["A", "B"])
def test_decomposed_layer_equals_its_formula(side):
    from asymlora.adapters.model import DecomposedLinear

    layer = make_layer(DecomposedLinear, DecomposedLoRAConfig(r=3, intermediate_dim=5, shared_side=side,
                                                              lora_dropout=0.0, init_weights=False))
    P = {k[len("declora_"):].split(".")[0]: p for k, p in layer.named_parameters() if k.startswith("declora_")}
    with torch.no_grad():
        acc = layer.accumulator("default")
        acc.copy_(torch.randn(acc.shape))
    x = torch.randn(4, 16)
    if side == "B":
        assert P["A"].shape == (3, 16) and P["M"].shape == (5, 3) and P["B1"].shape == (3, 5)
        assert P["B2"].shape == (12, 3) and acc.shape == (12, 5)
        dW = (acc + P["B2"] @ P["B1"]) @ P["M"] @ P["A"]
        assert torch.equal(layer.shared_product("default"), P["B2"] @ P["B1"])
    else:
        assert P["B"].shape == (12, 3) and P["M"].shape == (3, 5) and P["A1"].shape == (5, 3)
        assert P["A2"].shape == (3, 16) and acc.shape == (5, 16)
        dW = P["B"] @ P["M"] @ (acc + P["A1"] @ P["A2"])
    expected = layer.base_layer(x) + layer.scaling["default"] * x @ dW.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # the accumulator is state, not a trainable parameter
    assert all("declora_B0" not in n and "declora_A0" not in n for n, _ in layer.named_parameters())


@pytest.mark.parametrize("make_config", [ALL_CONFIGS[2], ALL_CONFIGS[3], ALL_CONFIGS[4]])
def test_static_adapters_merge_and_unmerge(tiny, ids, make_config):
    model = peft.get_peft_model(tiny, make_config(target_modules=["q_proj", "o_proj"], lora_dropout=0.0))
    randomise_up_projections(model, 2)
    model.eval()
    with torch.no_grad():
        before = model(ids).logits.clone()
        base_w = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.clone()
        model.merge_adapter()
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)
        assert not torch.equal(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, base_w)
        model.unmerge_adapter()
        torch.testing.assert_close(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight,
                                   base_w, rtol=0, atol=1e-6)


def test_routed_adapter_merges_only_at_a_fixed_gate(tiny, ids):
    model = peft.get_peft_model(tiny, ALoRAConfig(r=4, num_experts=3, target_modules=["q_proj"], lora_dropout=0.0))
    randomise_up_projections(model, 3)
    model.eval()
    with pytest.raises(StaticWeightError, match="fixed gate"):
        model.merge_adapter()
    gate = [0.5, 0.3, 0.2]
    for _, layer in iter_adapter_layers(model):
        layer.set_fixed_gate("default", gate)
    with torch.no_grad():
        routed_fixed = model(ids).logits.clone()
        model.merge_adapter()
        torch.testing.assert_close(model(ids).logits, routed_fixed, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    with pytest.raises(ValueError, match="3 experts"):
        next(iter_adapter_layers(model))[1].set_fixed_gate("default", [1.0, 0.0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make_config", ALL_CONFIGS[:3])
def test_half_precision_base_weights(ids, dtype, make_config):
    from asymlora.models import tiny_llama

    model = peft.get_peft_model(tiny_llama(dtype=dtype), make_config(target_modules=["q_proj", "v_proj"]))
    randomise_up_projections(model)
    out = model(ids).logits
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g.float()).all() for g in grads)


def test_disable_adapter_restores_base_output(tiny, ids):
    with torch.no_grad():
        base = tiny(ids).logits.clone()
    model = peft.get_peft_model(tiny, HydraLoRAConfig(r=4, num_experts=2, target_modules=["q_proj", "v_proj"]))
    randomise_up_projections(model)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base)
        with model.disable_adapter():
            assert torch.equal(model(ids).logits, base)


def test_record_gates_sees_every_token_of_every_routed_layer(tiny, ids):
    model = peft.get_peft_model(tiny, ALoRAConfig(r=4, num_experts=3, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad(), record_gates(model) as gates:
        model(ids)
    assert len(gates) == 4
    for seen in gates.values():
        (g,) = seen
        assert g.shape == (ids.numel(), 3)
        torch.testing.assert_close(g.sum(-1), torch.ones(ids.numel()))
    assert all(layer.gate_sink is None for _, layer in iter_adapter_layers(model))


def test_trainable_parameter_counts_match_the_formulas(tiny):
    d, r, n = 32, 4, 3
    counts = {}
    for key, cfg in {"alora": ALoRAConfig(r=r, num_experts=n, target_modules=["q_proj"]),
                     "hydra": HydraLoRAConfig(r=r, num_experts=n, target_modules=["q_proj"]),
                     "mos": MoSLoRAConfig(r=r, target_modules=["q_proj"])}.items():
        from asymlora.models import tiny_llama

        model = peft.get_peft_model(tiny_llama(), cfg)
        counts[key] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = 2
    assert counts["alora"] == layers * (n * r * d + d * r + n * d)
    assert counts["hydra"] == layers * (r * d + n * d * r + n * d)
    assert counts["mos"] == layers * (r * d + r * r + d * r)


@pytest.mark.parametrize("cls,config_cls", [(ALoRALinear, ALoRAConfig), (HydraLoRALinear, HydraLoRAConfig)])
@pytest.mark.parametrize("training", [True, False])
def test_the_forward_copies_no_weight(cls, config_cls, training):
    """No per-call copy of a weight (torch.cat([A, W_g]), B.repeat): with two tokens, no op makes a
    new tensor as large as the smallest adapter weight (views, e.g. F.linear's transpose, are free)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    layer = make_layer(cls, config_cls(r=4, num_experts=3, lora_dropout=0.1), d_in=64, d_out=48).train(training)
    x = torch.randn(2, 64)
    seen = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                seen.append((str(func), out.numel() if isinstance(out, torch.Tensor) else 0))
            return out

    with Ops():
        layer(x)
    names = {name for name, _ in seen}
    assert not any(op in name for name in names for op in ("cat", "repeat", "clone"))
    smallest_weight = min(p.numel() for n, p in layer.named_parameters() if n.startswith(layer.prefix))
    assert x.shape[0] * max(layer.in_features, layer.out_features) < smallest_weight
    assert [(name, n) for name, n in seen if n >= smallest_weight] == []
