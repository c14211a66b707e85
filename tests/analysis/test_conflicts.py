from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from asymlora.analysis.conflicts import (
    conflict_stats,
    gradient_conflicts,
    shared_A_components,
    shared_B_components,
)

D_IN, D_OUT, R, N, S = 6, 5, 3, 3, 2.0  # S = alpha / r


def _setup(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, D_IN, generator=gen, dtype=torch.float64)
    W0 = torch.randn(D_OUT, D_IN, generator=gen, dtype=torch.float64)
    Wg = torch.randn(N, D_IN, generator=gen, dtype=torch.float64)
    target = torch.randn(2, 4, D_OUT, generator=gen, dtype=torch.float64)
    return gen, x, W0, Wg, target


def _loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((y - target) ** 2).sum() + (y**3).sum() * 0.01  # not linear in y, so g varies per token


def test_shared_B_components_sum_to_autograd_and_match_per_expert_copies():
    gen, x, W0, Wg, target = _setup(0)
    A = torch.randn(N, R, D_IN, generator=gen, dtype=torch.float64)
    B = torch.randn(D_OUT, R, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(x @ Wg.T, dim=-1)  # per-token gates, (2, 4, N)

    # Hand-written ALoRA: y = W0 x + s B sum_i w_i A_i x
    h = torch.einsum("btn,nri,bti->btr", w, A, x)
    y = x @ W0.T + S * h @ B.T
    loss = _loss(y, target)
    dy, = torch.autograd.grad(loss, y, retain_graph=True)
    loss.backward()
    g = S * dy  # gradient w.r.t. the output of B

    comps = shared_B_components(x, g, A, w)
    assert comps.shape == (N, D_OUT, R)
    assert torch.allclose(comps.sum(0), B.grad, atol=1e-10)

    # Independent reference per expert: give each expert its own copy of B; the copy's gradient is
    # exactly that expert's share.
    copies = [B.detach().clone().requires_grad_(True) for _ in range(N)]
    y2 = x @ W0.T + S * sum(
        w[..., i : i + 1] * (x @ A[i].T) @ copies[i].T for i in range(N)
    )
    _loss(y2, target).backward()
    for i in range(N):
        assert torch.allclose(comps[i], copies[i].grad, atol=1e-10)

    stats = gradient_conflicts(x, g, A, w, shared="B")
    assert stats.total_norm == pytest.approx(B.grad.norm().item(), rel=1e-10)
    assert torch.allclose(stats.component_norms, torch.stack([c.grad.norm() for c in copies]))


def test_shared_A_components_sum_to_autograd_and_match_per_expert_copies():
    gen, x, W0, Wg, target = _setup(1)
    A = torch.randn(R, D_IN, generator=gen, dtype=torch.float64, requires_grad=True)
    Bs = torch.randn(N, D_OUT, R, generator=gen, dtype=torch.float64)
    w = torch.softmax(x @ Wg.T, dim=-1)

    # Hand-written HydraLoRA: y = W0 x + s sum_i w_i B_i A x
    ax = x @ A.T
    y = x @ W0.T + S * torch.einsum("btn,nor,btr->bto", w, Bs, ax)
    loss = _loss(y, target)
    dy, = torch.autograd.grad(loss, y, retain_graph=True)
    loss.backward()
    g = S * dy

    comps = shared_A_components(x, g, Bs, w)
    assert comps.shape == (N, R, D_IN)
    assert torch.allclose(comps.sum(0), A.grad, atol=1e-10)

    copies = [A.detach().clone().requires_grad_(True) for _ in range(N)]
    y2 = x @ W0.T + S * sum(w[..., i : i + 1] * (x @ copies[i].T) @ Bs[i].T for i in range(N))
    _loss(y2, target).backward()
    for i in range(N):
        assert torch.allclose(comps[i], copies[i].grad, atol=1e-10)

    stats = gradient_conflicts(x, g, Bs, w, shared="A")
    assert stats.total_norm == pytest.approx(A.grad.norm().item(), rel=1e-10)
    # conflict count against an independent pairwise loop
    expected = sum(
        1
        for i, j in itertools.combinations(range(N), 2)
        if F.cosine_similarity(comps[i].flatten(), comps[j].flatten(), dim=0) < 0
    )
    assert stats.n_conflicts == expected
    assert stats.n_pairs == 3


def test_conflict_counting_on_constructed_gradients():
    comps = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]])
    stats = conflict_stats(comps)
    # (0,1): cos < 0 -> conflict; (0,2): orthogonal, cos = 0 -> not a conflict; (1,2): cos > 0
    assert stats.n_conflicts == 1
    assert stats.n_pairs == 3
    assert torch.allclose(stats.component_norms, torch.tensor([1.0, 1.01**0.5, 1.0]))
    assert stats.total_norm == pytest.approx((0.0**2 + 1.1**2) ** 0.5)

    v = torch.randn(4, 3)
    alternating = torch.stack([v, -2 * v, 0.5 * v, -v])  # signs + - + -
    stats = conflict_stats(alternating)
    assert stats.n_conflicts == 4  # (0,1) (0,3) (1,2) (2,3)
    assert stats.n_pairs == 6
    assert stats.cosines[0, 1].item() == pytest.approx(-1.0, abs=1e-6)
    assert stats.total_norm == pytest.approx(1.5 * v.norm().item(), rel=1e-5)

    with_zero = torch.stack([v, torch.zeros_like(v), -v])
    stats = conflict_stats(with_zero)
    assert stats.n_conflicts == 1  # a zero component conflicts with nothing
    assert stats.summary() == {
        "grad_norm": pytest.approx(0.0, abs=1e-7),
        "component_norms": pytest.approx([v.norm().item(), 0.0, v.norm().item()]),
        "n_conflicts": 1,
        "n_pairs": 3,
    }


def test_bad_inputs():
    x, g = torch.randn(5, D_IN), torch.randn(5, D_OUT)
    w = torch.softmax(torch.randn(5, N), -1)
    A = torch.randn(N, R, D_IN)
    with pytest.raises(ValueError, match="token dimensions differ"):
        shared_B_components(x, torch.randn(4, D_OUT), A, w)
    with pytest.raises(ValueError, match="holds 2 experts but gates have 3"):
        shared_B_components(x, g, A[:2], w)
    with pytest.raises(ValueError, match="d_in = 6"):
        shared_B_components(x, g, torch.randn(N, R, D_IN + 1), w)
    with pytest.raises(ValueError, match="d_out = 5"):
        shared_A_components(x, g, torch.randn(N, D_OUT + 1, R), w)
    with pytest.raises(ValueError, match=r"stack of expert matrices"):
        shared_A_components(x, g, torch.randn(D_OUT, R), w)
    with pytest.raises(ValueError, match="shared must be 'A' or 'B'"):
        gradient_conflicts(x, g, A, w, shared="C")
    with pytest.raises(ValueError, match="n_experts"):
        conflict_stats(torch.randn(3))
