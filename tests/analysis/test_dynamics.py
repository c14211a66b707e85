from __future__ import annotations

import pytest
import torch

from asymlora.analysis.dynamics import column_magnitude_direction, magnitude_direction_change


def test_hand_computed_two_columns():
    # columns of W1: (3, 4) |5|, (0, 1) |1|;  columns of W2: (0, 5) |5|, (2, 0) |2|
    W1 = torch.tensor([[3.0, 0.0], [4.0, 1.0]])
    W2 = torch.tensor([[0.0, 2.0], [5.0, 0.0]])
    dM, dD = magnitude_direction_change(W1, W2)
    # dM = (|5 - 5| + |1 - 2|) / 2; cos_1 = 20 / 25 = 0.8, cos_2 = 0  ->  dD = ((1 - 0.8) + (1 - 0)) / 2
    assert dM == pytest.approx(0.5, abs=1e-12)
    assert dD == pytest.approx(0.6, abs=1e-12)
    # symmetric in its arguments
    assert magnitude_direction_change(W2, W1) == pytest.approx((dM, dD))


def test_scaling_is_magnitude_only_and_flipping_is_maximal_direction_change():
    W = torch.tensor([[1.0, 2.0, 0.0], [2.0, -1.0, 3.0]])
    scaled = W * torch.tensor([2.0, 1.0, 1.0])  # column 0 doubled: |c0| = sqrt(5)
    dM, dD = magnitude_direction_change(W, scaled)
    assert dM == pytest.approx(5**0.5 / 3, abs=1e-12)
    assert dD == pytest.approx(0.0, abs=1e-12)
    flipped = W * torch.tensor([1.0, -1.0, 1.0])  # column 1 reversed: cos = -1 -> 1 - cos = 2
    dM, dD = magnitude_direction_change(W, flipped)
    assert dM == pytest.approx(0.0, abs=1e-12)
    assert dD == pytest.approx(2 / 3, abs=1e-12)
    assert magnitude_direction_change(W, W) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_zero_columns_are_safe():
    W1 = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    W2 = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    # column 0: zero in both -> unchanged (0); column 1: (0, 3) -> (4, 0): |3 - 4| = 1, cos = 0
    dM, dD = magnitude_direction_change(W1, W2)
    assert dM == pytest.approx(0.5)
    assert dD == pytest.approx(0.5)
    # from an all-zero B (its initial state): every column counts as fully turned, no NaN
    B = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    dM, dD = magnitude_direction_change(torch.zeros(2, 2), B)
    assert dM == pytest.approx(1.5)
    assert dD == pytest.approx(1.0)
    m, V = column_magnitude_direction(W1)
    assert torch.equal(m, torch.tensor([0.0, 3.0], dtype=torch.float64))
    assert torch.equal(V[:, 0], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(V[:, 1], torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_matches_an_independent_loop():
    gen = torch.Generator().manual_seed(0)
    W1 = torch.randn(7, 5, generator=gen)
    W2 = W1 + 0.5 * torch.randn(7, 5, generator=gen)
    dm, dd = 0.0, 0.0
    for j in range(5):
        a, b = W1[:, j].double(), W2[:, j].double()
        dm += abs(a.norm() - b.norm()).item()
        dd += 1 - torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    dM, dD = magnitude_direction_change(W1, W2)
    assert dM == pytest.approx(dm / 5, rel=1e-6)
    assert dD == pytest.approx(dd / 5, rel=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes differ"):
        magnitude_direction_change(torch.ones(3, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="2-D"):
        magnitude_direction_change(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="empty"):
        magnitude_direction_change(torch.ones(0, 3), torch.ones(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        magnitude_direction_change(torch.ones(2, 2), torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
