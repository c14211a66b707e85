"""Each method's maths against numbers typed out by hand."""

from __future__ import annotations

import pytest
import torch

from asymlora.federated.algorithms import (
    FedALoRA, FedALoRAHet, FedDPA, FedIT, FedSALoRA, FedSALoRAHet, FLoRA, ZeroPadding, build_method,
    effective_delta, merge_base_deltas,
)

M = "base_model.model.layers.0.q_proj"
A, B = f"{M}.lora_A.weight", f"{M}.lora_B.weight"
T = lambda *rows: torch.tensor(rows, dtype=torch.float32)  # noqa: E731


def lora(a, b):
    return {A: T(*a), B: T(*b)}


# client 1 and 2, rank 1, d_in = 2, d_out = 2; weights from 1 and 3 examples: 1/4, 3/4
C1 = lora([[1.0, 2.0]], [[2.0], [0.0]])
C2 = lora([[5.0, 6.0]], [[6.0], [4.0]])
N = [1, 3]
A_AVG = T([4.0, 5.0])            # 1/4 [1, 2] + 3/4 [5, 6]
B_AVG = T([5.0], [3.0])          # 1/4 [2, 0] + 3/4 [6, 4]


def test_fedit_averages_a_and_b():
    m = FedIT()
    ups = [m.client_upload(c) for c in (C1, C2)]
    assert set(ups[0]) == {A, B}
    out = m.aggregate(ups, N)
    torch.testing.assert_close(out[A], A_AVG)
    torch.testing.assert_close(out[B], B_AVG)
    new = m.client_apply({**C1, "other.x": torch.ones(1)}, out)
    torch.testing.assert_close(new[A], A_AVG)
    torch.testing.assert_close(new[B], B_AVG)
    assert torch.equal(new["other.x"], torch.ones(1))
    assert torch.equal(C1[A], T([1.0, 2.0]))  # input state untouched


def test_fedsa_sends_a_keeps_b():
    m = FedSALoRA()
    ups = [m.client_upload(c) for c in (C1, C2)]
    assert set(ups[0]) == {A}
    out = m.aggregate(ups, N)
    assert set(out) == {A}
    new = m.client_apply(C1, out)
    torch.testing.assert_close(new[A], A_AVG)
    assert torch.equal(new[B], C1[B])


def test_fedalora_sends_b_keeps_a():
    m = FedALoRA()
    ups = [m.client_upload(c) for c in (C1, C2)]
    assert set(ups[0]) == {B}
    out = m.aggregate(ups, N)
    assert set(out) == {B}
    torch.testing.assert_close(out[B], B_AVG)
    new = m.client_apply(C2, out)
    assert torch.equal(new[A], C2[A])
    torch.testing.assert_close(new[B], B_AVG)


def test_upload_is_a_copy():
    up = FedALoRA().client_upload(C1)
    up[B].add_(100)
    assert torch.equal(C1[B], T([2.0], [0.0]))


def test_feddpa_global_averaged_local_never_sent():
    def state(g_a, l_a):
        return {f"{M}.lora_A.global.weight": T(g_a), f"{M}.lora_B.global.weight": T([1.0], [1.0]),
                f"{M}.lora_A.local.weight": T(l_a), f"{M}.lora_B.local.weight": T([7.0], [7.0])}
    s1, s2 = state([1.0, 2.0], [9.0, 9.0]), state([5.0, 6.0], [8.0, 8.0])
    m = FedDPA()
    ups = [m.client_upload(s) for s in (s1, s2)]
    assert all(".global." in k for up in ups for k in up) and len(ups[0]) == 2
    out = m.aggregate(ups, N)
    torch.testing.assert_close(out[f"{M}.lora_A.global.weight"], A_AVG)
    new = m.client_apply(s1, out)
    assert torch.equal(new[f"{M}.lora_A.local.weight"], T([9.0, 9.0]))
    torch.testing.assert_close(new[f"{M}.lora_A.global.weight"], A_AVG)
    with pytest.raises(KeyError, match="names no adapters"):
        m.client_upload(C1)
    with pytest.raises(ValueError, match="two distinct adapter names"):
        FedDPA("x", "x")


def test_zeropadding_pads_averages_and_truncates():
    r1 = lora([[1.0, 1.0]], [[2.0], [2.0]])                       # rank 1
    r2 = lora([[3.0, 3.0], [4.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]])  # rank 2
    m = ZeroPadding()
    out = m.aggregate([m.client_upload(r1), m.client_upload(r2)], [1, 1])
    torch.testing.assert_close(out[A], T([2.0, 2.0], [2.0, 2.0]))       # rows: (1+3)/2, (0+4)/2
    torch.testing.assert_close(out[B], T([1.5, 1.0], [2.5, 2.0]))       # cols: (2+1)/2, (0+2)/2 ...
    n1, n2 = m.client_apply(r1, out), m.client_apply(r2, out)
    torch.testing.assert_close(n1[A], T([2.0, 2.0]))
    torch.testing.assert_close(n1[B], T([1.5], [2.5]))
    torch.testing.assert_close(n2[B], out[B])
    # a rank-3 client after a round whose r_max was 2 keeps zeros in its third slot
    r3 = lora([[0.0, 0.0]] * 3, [[0.0] * 3] * 2)
    n3 = m.client_apply(r3, out)
    torch.testing.assert_close(n3[A], T([2.0, 2.0], [2.0, 2.0], [0.0, 0.0]))
    torch.testing.assert_close(n3[B], T([1.5, 1.0, 0.0], [2.5, 2.0, 0.0]))
    with pytest.raises(ValueError, match="cannot be cut to the client's \\(2, 3\\)"):
        m.client_apply({A: torch.zeros(2, 3)}, out)


def test_flora_stack_hand_values_and_identity():
    r1 = lora([[1.0, 2.0]], [[1.0], [0.0]])
    r2 = lora([[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]])
    m = FLoRA()
    out = m.aggregate([m.client_upload(r1), m.client_upload(r2)], [1, 3])
    torch.testing.assert_close(out[A], T([0.25, 0.5], [0.75, 0.0], [0.0, 0.75]))
    torch.testing.assert_close(out[B], T([1.0, 2.0, 0.0], [0.0, 0.0, 2.0]))
    # B_stack A_stack = 1/4 B1 A1 + 3/4 B2 A2 = 1/4 [[1,2],[0,0]] + 3/4 [[2,0],[0,2]]
    torch.testing.assert_close(m.base_weight_deltas(out)[M], T([1.75, 0.5], [0.0, 1.5]))


def test_flora_identity_random_ranks():
    g = torch.Generator().manual_seed(0)
    ranks, n = [4, 1, 3], [10, 20, 70]
    states = [{A: torch.randn(r, 6, generator=g), B: torch.randn(5, r, generator=g)} for r in ranks]
    scalings = [0.5, 2.0, 1.0]
    ups = [FLoRA(scaling=s).client_upload(st) for s, st in zip(scalings, states)]
    out = FLoRA().aggregate(ups, n)
    assert out[A].shape == (8, 6) and out[B].shape == (5, 8)
    expected = sum(p / 100 * s * st[B] @ st[A] for p, s, st in zip(n, scalings, states))
    torch.testing.assert_close(out[B] @ out[A], expected)
    new = FLoRA().client_apply(states[0], out)
    assert torch.equal(new[A], states[0][A]) and not new[B].any() and new[B].shape == (5, 4)
    fresh = FLoRA().round_start(new, 2, torch.Generator().manual_seed(1))
    assert not torch.equal(fresh[A], new[A]) and fresh[A].abs().max() <= 1 / 6 ** 0.5 and not fresh[B].any()
    assert FLoRA().round_start(new, 1) == new


def test_flora_merge_into_a_real_peft_model():
    from .fedhelpers import lora_model
    from peft import get_peft_model_state_dict

    models = [lora_model(2, seed=0, alpha=4), lora_model(4, seed=0, alpha=4)]  # scalings 2 and 1
    g = torch.Generator().manual_seed(3)
    states = []
    for mdl in models:
        sd = {k: v.clone() for k, v in get_peft_model_state_dict(mdl).items()}
        sd = {k: (torch.randn(v.shape, generator=g) if "lora_B" in k else v) for k, v in sd.items()}
        states.append(sd)
    ups = [FLoRA(scaling=s).client_upload(st) for s, st in zip((2.0, 1.0), states)]
    out = FLoRA().aggregate(ups, [1, 1])
    target = models[0]
    name = "base_model.model.model.layers.1.self_attn.v_proj"
    w0 = target.get_submodule(name).base_layer.weight.detach().clone()
    expected = w0 + sum(0.5 * s * st[f"{name}.lora_B.weight"] @ st[f"{name}.lora_A.weight"]
                        for s, st in zip((2.0, 1.0), states))
    merge_base_deltas(target, FLoRA().base_weight_deltas(out))
    torch.testing.assert_close(target.get_submodule(name).base_layer.weight, expected)
    with pytest.raises(KeyError, match="no module 'nope'"):
        merge_base_deltas(target, {"nope": torch.zeros(1, 1)})


# ---- heterogeneous decomposition ----------------------------------------------------------
K = "m.layers.0.v_proj"
KEY = lambda role: f"{K}.{role}"  # noqa: E731  (the decomposed layer's spelling, adapter name stripped)


def test_fedalora_het_aggregates_products_into_b0():
    c1 = {KEY("declora_B2"): T([1.0], [2.0]), KEY("declora_B1"): T([1.0, 0.0])}                       # rank 1
    c2 = {KEY("declora_B2"): T([1.0, 0.0], [0.0, 1.0]), KEY("declora_B1"): T([0.0, 1.0], [1.0, 0.0])}  # rank 2
    m = FedALoRAHet()
    out = m.aggregate([c1, c2], [1, 1])
    assert list(out) == [KEY("declora_B0")]
    # 1/2 [[1,0],[2,0]] + 1/2 [[0,1],[1,0]]
    torch.testing.assert_close(out[KEY("declora_B0")], T([0.5, 0.5], [1.5, 0.0]))
    state = {KEY("declora_A"): torch.ones(1, 3), KEY("declora_M"): torch.ones(2, 1), **c1,
             KEY("declora_B0"): T([1.0, 1.0], [1.0, 1.0])}
    new = m.client_apply(state, out)
    torch.testing.assert_close(new[KEY("declora_B0")], T([1.5, 1.5], [2.5, 1.0]))
    assert not new[KEY("declora_B2")].any()
    for role in ("declora_A", "declora_M", "declora_B1"):
        assert torch.equal(new[KEY(role)], state[KEY(role)])
    assert m.trainable_keys(state) == [KEY(r) for r in ("declora_A", "declora_M", "declora_B2", "declora_B1")]


def test_fedsa_het_is_the_mirror():
    c1 = {KEY("declora_A1"): T([1.0], [2.0]), KEY("declora_A2"): T([1.0, 0.0])}                       # rank 1
    c2 = {KEY("declora_A1"): T([1.0, 0.0], [0.0, 1.0]), KEY("declora_A2"): T([0.0, 1.0], [1.0, 0.0])}  # rank 2
    m = FedSALoRAHet()
    ups = [m.client_upload({**c, KEY("declora_B"): torch.ones(3, 1), KEY("declora_M"): torch.ones(1, 2),
                            KEY("declora_A0"): torch.zeros(2, 2)}) for c in (c1, c2)]
    assert all(set(u) == {KEY("declora_A1"), KEY("declora_A2")} for u in ups)
    out = m.aggregate(ups, [3, 1])
    # 3/4 [[1,0],[2,0]] + 1/4 [[0,1],[1,0]]
    torch.testing.assert_close(out[KEY("declora_A0")], T([0.75, 0.25], [1.75, 0.0]))


@pytest.mark.parametrize("side, method", [("B", FedALoRAHet()), ("A", FedSALoRAHet())])
def test_round_start_keeps_dw_after_apply(side, method):
    from .fedhelpers import decomposed_state

    states = [decomposed_state(r, 3, side, seed=s) for s, r in ((0, 4), (1, 2))]
    out = method.aggregate([method.client_upload(s) for s in states], [2, 5])
    applied = method.client_apply(states[0], out)
    modules = {k.rsplit(".", 1)[0] for k in applied}
    before = {mod: effective_delta(applied, mod) for mod in modules}
    # the applied model is the old accumulator plus the average, with the local increment folded in
    mod = sorted(modules)[0]
    acc = "declora_B0" if side == "B" else "declora_A0"
    assert torch.equal(applied[f"{mod}.{acc}"], states[0][f"{mod}.{acc}"] + out[f"{mod}.{acc}"])
    started = method.round_start(applied, 2, torch.Generator().manual_seed(0))
    redrawn = "declora_B1" if side == "B" else "declora_A1"
    assert not torch.equal(started[f"{mod}.{redrawn}"], applied[f"{mod}.{redrawn}"])
    for mod in modules:
        torch.testing.assert_close(effective_delta(started, mod), before[mod])
    # round start alone on a mid-round state does reset the local increment
    mid = method.round_start(states[0], 2, torch.Generator().manual_seed(0))
    zeroed = "declora_B2" if side == "B" else "declora_A2"
    assert not mid[f"{mod}.{zeroed}"].any()
    assert method.round_start(states[0], 1) == states[0]


def test_round_start_with_the_real_decomposed_layer():
    """The key convention and effective_delta agree with the core layer's own delta_weight."""
    from peft import set_peft_model_state_dict

    from .fedhelpers import decomposed_model, decomposed_state

    model = decomposed_model(4, 3, "B")
    state = decomposed_state(4, 3, "B", seed=7)
    m = FedALoRAHet()
    state = m.client_apply(state, m.aggregate([m.client_upload(state)], [1]))
    set_peft_model_state_dict(model, state)
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    layer = model.get_submodule(name)
    before = layer.delta_weight("default").detach().clone()
    torch.testing.assert_close(before, effective_delta(state, name) * layer.scaling["default"])
    set_peft_model_state_dict(model, m.round_start(state, 3, torch.Generator().manual_seed(0)))
    assert not torch.equal(layer.declora_B1["default"], state[f"{name}.declora_B1"])
    torch.testing.assert_close(layer.delta_weight("default"), before)


def test_build_method():
    assert isinstance(build_method("fedalora"), FedALoRA)
    assert isinstance(build_method("fedalora", heterogeneous=True), FedALoRAHet)
    assert isinstance(build_method("fedsa", heterogeneous=True), FedSALoRAHet)
    assert build_method("flora", scaling=2.0).scaling == 2.0
    with pytest.raises(ValueError, match="fedit averages A and B element-wise"):
        build_method("fedit", heterogeneous=True)
    with pytest.raises(ValueError, match="unknown federated method 'x'"):
        build_method("x")


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match="fedalora: the client state has no lora_B factors"):
        FedALoRA().client_upload({"x.declora_A": torch.ones(1, 1)})
    with pytest.raises(KeyError, match="broadcast carries 'zz.lora_B.weight'"):
        FedIT().client_apply(C1, {"zz.lora_B.weight": torch.ones(2, 1)})
    with pytest.raises(ValueError, match="broadcast .* has shape \\(2, 3\\)"):
        FedIT().client_apply(C1, {B: torch.ones(2, 3)})
    with pytest.raises(ValueError, match="fedit needs one rank for all clients"):
        FedIT().aggregate([C1, lora([[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]])], [1, 1])
    with pytest.raises(ValueError, match="num_examples must be a positive integer, got 0"):
        FedIT().aggregate([C1, C2], [1, 0])
    with pytest.raises(ValueError, match="upload 1 has different keys"):
        FedIT().aggregate([C1, {A: C2[A]}], [1, 1])
