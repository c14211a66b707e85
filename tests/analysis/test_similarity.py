from __future__ import annotations

import math

import pytest
import torch

from asymlora.analysis.similarity import (
    DegenerateSubspaceError,
    orthonormal_basis,
    similarity_of_A,
    similarity_of_B,
    subspace_similarity,
)


def _invertible(r: int, gen: torch.Generator) -> torch.Tensor:
    # A well-conditioned random invertible matrix (not just orthogonal): rotation *and* scaling.
    Q, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
    return Q @ torch.diag(torch.linspace(0.5, 2.0, r, dtype=torch.float64)) + 0.1 * torch.eye(r, dtype=torch.float64)


def test_hand_computed_values():
    e = torch.eye(3, dtype=torch.float64)
    M1 = torch.stack([e[0], e[1]], dim=1)  # span{e1, e2}
    M2 = torch.stack([e[0], e[2]], dim=1)  # span{e1, e3}: U1^T U2 = [[1, 0], [0, 0]]
    assert subspace_similarity(M1, M2) == pytest.approx(0.5, abs=1e-12)
    M3 = torch.stack([e[0], (e[1] + e[2]) / math.sqrt(2)], dim=1)  # ||.||_F^2 = 1 + 1/2
    assert subspace_similarity(M1, M3) == pytest.approx(0.75, abs=1e-12)
    M4 = torch.stack([e[2], e[2] + 0 * e[0]], dim=1)
    with pytest.raises(DegenerateSubspaceError, match="numerical rank 1 < 2"):
        subspace_similarity(M1, M4)


def test_same_subspace_is_one_and_symmetric():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    assert subspace_similarity(M, M) == pytest.approx(1.0, abs=1e-12)
    N = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    assert subspace_similarity(M, N) == pytest.approx(subspace_similarity(N, M), abs=1e-12)


def test_invariant_to_rotation_within_the_rank():
    gen = torch.Generator().manual_seed(1)
    d_in, d_out, r = 24, 16, 4
    A1 = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
    A2 = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
    B1 = torch.randn(d_out, r, generator=gen, dtype=torch.float64)
    B2 = torch.randn(d_out, r, generator=gen, dtype=torch.float64)
    R1, R2 = _invertible(r, gen), _invertible(r, gen)
    # dW = B A = (B R)(R^-1 A): the pair (B R, R^-1 A) is the same adapter.
    assert torch.allclose(B1 @ A1, (B1 @ R1) @ (torch.linalg.inv(R1) @ A1))
    assert similarity_of_B(B1, B1 @ R1) == pytest.approx(1.0, abs=1e-10)
    assert similarity_of_A(A1, torch.linalg.inv(R1) @ A1) == pytest.approx(1.0, abs=1e-10)
    base_B = similarity_of_B(B1, B2)
    base_A = similarity_of_A(A1, A2)
    assert 0.0 < base_B < 0.9 and 0.0 < base_A < 0.9
    assert similarity_of_B(B1 @ R1, B2 @ R2) == pytest.approx(base_B, abs=1e-10)
    assert similarity_of_A(torch.linalg.inv(R1) @ A1, torch.linalg.inv(R2) @ A2) == pytest.approx(base_A, abs=1e-10)


def test_random_subspaces_near_r_over_d():
    # For independent uniformly random r-dim subspaces of R^d, E ||U1^T U2||_F^2 = r^2 / d, so E Sim = r / d.
    gen = torch.Generator().manual_seed(2)
    d, r, trials = 64, 4, 300
    sims = [
        subspace_similarity(torch.randn(d, r, generator=gen), torch.randn(d, r, generator=gen))
        for _ in range(trials)
    ]
    mean = sum(sims) / trials
    assert mean == pytest.approx(r / d, abs=0.01)
    assert max(sims) < 0.5


def test_rank_argument_uses_top_singular_directions():
    e = torch.eye(4, dtype=torch.float64)
    M1 = torch.stack([3 * e[0], e[1]], dim=1)
    M2 = torch.stack([5 * e[0], e[2]], dim=1)
    assert subspace_similarity(M1, M2, rank=1) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(M1, M2, rank=2) == pytest.approx(0.5, abs=1e-12)
    U = orthonormal_basis(M1, rank=1)
    assert U.shape == (4, 1)
    assert abs(float(U[0, 0])) == pytest.approx(1.0)


def test_low_precision_inputs_match_float64():
    gen = torch.Generator().manual_seed(3)
    M1 = torch.randn(32, 4, generator=gen)
    M2 = M1 + 0.3 * torch.randn(32, 4, generator=gen)
    ref = subspace_similarity(M1.double(), M2.double())
    assert subspace_similarity(M1.to(torch.bfloat16), M2.to(torch.bfloat16)) == pytest.approx(ref, abs=0.02)


def test_bad_inputs():
    M = torch.randn(10, 3)
    with pytest.raises(ValueError, match="shapes differ"):
        subspace_similarity(M, torch.randn(10, 4))
    with pytest.raises(ValueError, match="shapes differ: A1"):
        similarity_of_A(torch.randn(3, 10), torch.randn(2, 10))
    with pytest.raises(ValueError, match="rank must be positive"):
        subspace_similarity(M, M, rank=0)
    with pytest.raises(ValueError, match="exceeds the number of columns"):
        subspace_similarity(M, M, rank=4)
    with pytest.raises(ValueError, match="2-D"):
        subspace_similarity(torch.randn(2, 10, 3), torch.randn(2, 10, 3))
    with pytest.raises(ValueError, match="2-D"):
        similarity_of_B(torch.randn(10), torch.randn(10))
    with pytest.raises(ValueError, match="fewer rows than columns"):
        similarity_of_B(torch.randn(3, 10), torch.randn(3, 10))  # an A passed as if it were B
    with pytest.raises(DegenerateSubspaceError, match="numerical rank 0"):
        similarity_of_B(torch.zeros(10, 3), M)  # B at its zero initialisation
    with pytest.raises(ValueError, match="NaN"):
        subspace_similarity(torch.full((10, 3), float("nan")), M)
    with pytest.raises(TypeError, match="rank must be an int"):
        subspace_similarity(M, M, rank=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torch.Tensor"):
        subspace_similarity([[1.0]], M)  # type: ignore[arg-type]
