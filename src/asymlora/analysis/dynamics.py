"""Magnitude and direction change between two states of a weight matrix (paper §3.2, SPEC §3).

Following DoRA, W = m V column-wise (m_j = ||W[:, j]||, V unit columns). Separating the two says
whether training rescaled a factor (A: mostly magnitude) or turned it (B: direction), which the
paper uses to argue that A acts as a fixed projector and B carries the task knowledge.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["column_magnitude_direction", "magnitude_direction_change"]


def _check(W: Tensor, name: str) -> None:
    if not isinstance(W, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix (d_out x d_in), got shape {tuple(W.shape)}")
    if W.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(W.shape)})")
    if not torch.isfinite(W).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def column_magnitude_direction(W: Tensor) -> tuple[Tensor, Tensor]:
    """(m, V) with m_j = ||W[:, j]|| and V[:, j] = W[:, j] / m_j; an all-zero column gets V = 0."""
    _check(W, "W")
    W64 = W.detach().to(torch.float64)
    m = torch.linalg.vector_norm(W64, dim=0)
    V = torch.where(m > 0, W64 / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(W64))
    return m, V


def magnitude_direction_change(W1: Tensor, W2: Tensor) -> tuple[float, float]:
    """(dM, dD): mean_j |m1_j - m2_j| and mean_j (1 - cos(V1_j, V2_j)).

    A zero column has no direction. Two zero columns count as unchanged (cos = 1); a column that
    is zero in one state only counts as fully turned (cos = 0), so starting from B = 0 gives dD = 1
    rather than NaN.
    """
    _check(W1, "W1")
    _check(W2, "W2")
    if W1.shape != W2.shape:
        raise ValueError(f"shapes differ: W1 is {tuple(W1.shape)}, W2 is {tuple(W2.shape)}")
    m1, V1 = column_magnitude_direction(W1)
    m2, V2 = column_magnitude_direction(W2)
    cos = (V1 * V2).sum(dim=0).clamp(-1.0, 1.0)
    both_zero = (m1 == 0) & (m2 == 0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)
    dM = (m1 - m2).abs().mean().item()
    dD = (1.0 - cos).mean().item()
    return float(dM), float(dD)
