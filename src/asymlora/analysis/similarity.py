"""Subspace similarity of LoRA factors (paper Appendix A.1, SPEC §3).

A and B are only defined up to an invertible r x r factor (B A = (B R)(R^-1 A)), so comparing
them entry by entry is meaningless; what is invariant is the subspace they span. We therefore
compare orthonormal bases of column spaces: Sim(M1, M2) = ||U1^T U2||_F^2 / r, which is 1 for the
same subspace and about r / d for unrelated random ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "DegenerateSubspaceError",
    "orthonormal_basis",
    "subspace_similarity",
    "similarity_of_A",
    "similarity_of_B",
]


class DegenerateSubspaceError(ValueError):
    """A matrix spans fewer than the requested number of directions (e.g. B at its zero init)."""


def _check_matrix(M: Tensor, name: str) -> None:
    if not isinstance(M, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(M).__name__}")
    if M.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix (d x r), got shape {tuple(M.shape)}")
    if M.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(M.shape)})")
    if not torch.isfinite(M).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _resolve_rank(M1: Tensor, rank: int | None) -> int:
    d, r = M1.shape
    if d < r:
        raise ValueError(
            f"matrices are {d} x {r}: fewer rows than columns, so they cannot span {r} directions; "
            "pass d x r matrices (A as A^T, i.e. use similarity_of_A for r x d_in factors)"
        )
    if rank is None:
        return r
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int or None, got {type(rank).__name__}")
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    if rank > r:
        raise ValueError(f"rank {rank} exceeds the number of columns r = {r}")
    return rank


def orthonormal_basis(M: Tensor, rank: int | None = None, name: str = "M") -> Tensor:
    """The top-`rank` left singular vectors of M (d x r), in float64.

    Raises DegenerateSubspaceError when M has fewer than `rank` numerically non-zero singular
    values: the remaining singular vectors would be arbitrary and so would the similarity.
    """
    _check_matrix(M, name)
    k = _resolve_rank(M, rank)
    eps = torch.finfo(M.dtype).eps if M.is_floating_point() else torch.finfo(torch.float64).eps
    M64 = M.detach().to(torch.float64)
    U, S, _ = torch.linalg.svd(M64, full_matrices=False)
    tol = S[0] * max(M.shape) * eps
    numerical_rank = int((S > tol).sum()) if S[0] > 0 else 0
    if numerical_rank < k:
        raise DegenerateSubspaceError(
            f"{name} (shape {tuple(M.shape)}) has numerical rank {numerical_rank} < {k}: its "
            "column space is not defined at that rank (an all-zero B, as at initialisation?)"
        )
    return U[:, :k]


def _similarity(M1: Tensor, M2: Tensor, rank: int | None, names: tuple[str, str]) -> float:
    n1, n2 = names
    _check_matrix(M1, n1)
    _check_matrix(M2, n2)
    if M1.shape != M2.shape:
        raise ValueError(f"shapes differ: {n1} is {tuple(M1.shape)}, {n2} is {tuple(M2.shape)}")
    k = _resolve_rank(M1, rank)
    U1 = orthonormal_basis(M1, k, n1)
    U2 = orthonormal_basis(M2, k, n2)
    sim = torch.linalg.matrix_norm(U1.T @ U2, ord="fro").pow(2).item() / k
    # Rounding can push a perfect match a hair above 1.
    return float(min(max(sim, 0.0), 1.0))


def subspace_similarity(M1: Tensor, M2: Tensor, rank: int | None = None) -> float:
    """Sim = ||U1^T U2||_F^2 / k on the top-k column spaces (k = rank, default the column count r)."""
    return _similarity(M1, M2, rank, ("M1", "M2"))


def similarity_of_A(A1: Tensor, A2: Tensor, rank: int | None = None) -> float:
    """Sim of two LoRA A factors given as r x d_in (compared through their row spaces, i.e. A^T)."""
    for name, A in (("A1", A1), ("A2", A2)):
        _check_matrix(A, name)
    return _similarity(A1.T, A2.T, rank, ("A1^T", "A2^T"))


def similarity_of_B(B1: Tensor, B2: Tensor, rank: int | None = None) -> float:
    """Sim of two LoRA B factors given as d_out x r (compared through their column spaces)."""
    return _similarity(B1, B2, rank, ("B1", "B2"))
