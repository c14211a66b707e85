"""Per-expert gradient components of a shared LoRA factor and their conflicts (paper §3.3).

The gradient of a matrix shared by n experts is a sum of one term per expert. When those terms
point against each other (negative cosine) they cancel, and the shared matrix barely moves: the
paper's "lazy learning" of a shared A. Splitting the gradient lets us count such conflicts and
compare sharing A (HydraLoRA) with sharing B (ALoRA).

Notation, per token t: x_t the adapter input (d_in), g_t = dL/d(output of the shared/summed
factor) (d_out; i.e. `scaling` times dL/dy), w_t the softmax gates (n).
  sharing B: y = W0 x + s B sum_i w_i A_i x,   component_i = sum_t w_ti g_t (A_i x_t)^T   (d_out x r)
  sharing A: y = W0 x + s sum_i w_i B_i A x,   component_i = sum_t w_ti (B_i^T g_t) x_t^T (r x d_in)
The components sum to the true gradient of the shared matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ConflictStats",
    "shared_B_components",
    "shared_A_components",
    "conflict_stats",
    "gradient_conflicts",
]


@dataclass(frozen=True)
class ConflictStats:
    components: Tensor  # (n, *shared_shape)
    component_norms: Tensor  # (n,)
    total: Tensor  # sum of the components = gradient of the shared matrix
    total_norm: float
    cosines: Tensor  # (n, n) pairwise cosine similarity; 0 where a component is zero
    n_conflicts: int  # pairs i < j with negative cosine
    n_pairs: int

    def summary(self) -> dict:
        """JSON-ready numbers (no tensors of the matrix's size)."""
        return {
            "grad_norm": self.total_norm,
            "component_norms": [float(v) for v in self.component_norms],
            "n_conflicts": self.n_conflicts,
            "n_pairs": self.n_pairs,
        }


def _work_dtype(*ts: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in ts:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _flatten_tokens(
    x: Tensor, g: Tensor, gates: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    for name, t in (("x", x), ("g", g), ("gates", gates)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 1:
            raise ValueError(f"{name} must have a feature dimension, got a scalar")
    lead = x.shape[:-1]
    if g.shape[:-1] != lead or gates.shape[:-1] != lead:
        raise ValueError(
            "token dimensions differ: x is "
            f"{tuple(x.shape)}, g is {tuple(g.shape)}, gates is {tuple(gates.shape)}; "
            "all must share the leading (batch, seq) shape"
        )
    dtype = _work_dtype(x, g, gates)
    return (
        x.detach().reshape(-1, x.shape[-1]).to(dtype),
        g.detach().reshape(-1, g.shape[-1]).to(dtype),
        gates.detach().reshape(-1, gates.shape[-1]).to(dtype),
    )


def _check_experts(E: Tensor, name: str, n: int) -> None:
    if not isinstance(E, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(E).__name__}")
    if E.dim() != 3:
        raise ValueError(f"{name} must be a stack of expert matrices (n, ., .), got shape {tuple(E.shape)}")
    if E.shape[0] != n:
        raise ValueError(f"{name} holds {E.shape[0]} experts but gates have {n} entries")


def shared_B_components(x: Tensor, g: Tensor, A: Tensor, gates: Tensor) -> Tensor:
    """Per-expert parts of dL/dB for a shared B: A (n, r, d_in) -> components (n, d_out, r)."""
    x2, g2, w2 = _flatten_tokens(x, g, gates)
    _check_experts(A, "A", w2.shape[1])
    if A.shape[2] != x2.shape[1]:
        raise ValueError(f"A is {tuple(A.shape)} (n, r, d_in) but x has d_in = {x2.shape[1]}")
    h = torch.einsum("nri,ti->tnr", A.detach().to(x2.dtype), x2)  # A_i x_t
    return torch.einsum("to,tnr->nor", g2, w2.unsqueeze(-1) * h)


def shared_A_components(x: Tensor, g: Tensor, B: Tensor, gates: Tensor) -> Tensor:
    """Per-expert parts of dL/dA for a shared A: B (n, d_out, r) -> components (n, r, d_in)."""
    x2, g2, w2 = _flatten_tokens(x, g, gates)
    _check_experts(B, "B", w2.shape[1])
    if B.shape[1] != g2.shape[1]:
        raise ValueError(f"B is {tuple(B.shape)} (n, d_out, r) but g has d_out = {g2.shape[1]}")
    u = torch.einsum("nor,to->tnr", B.detach().to(g2.dtype), g2)  # B_i^T g_t
    return torch.einsum("tnr,ti->nri", w2.unsqueeze(-1) * u, x2)


def conflict_stats(components: Tensor) -> ConflictStats:
    """Norms, their sum's norm and the number of expert pairs whose components have cos < 0."""
    if not isinstance(components, Tensor):
        raise TypeError(f"components must be a torch.Tensor, got {type(components).__name__}")
    if components.dim() < 2:
        raise ValueError(f"components must be (n_experts, ...), got shape {tuple(components.shape)}")
    n = components.shape[0]
    flat = components.detach().reshape(n, -1)
    norms = torch.linalg.vector_norm(flat, dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    unit = flat / safe.unsqueeze(1)
    cos = unit @ unit.T
    iu = torch.triu_indices(n, n, offset=1, device=cos.device)
    pair_cos = cos[iu[0], iu[1]]
    total = components.detach().sum(dim=0)
    return ConflictStats(
        components=components.detach(),
        component_norms=norms,
        total=total,
        total_norm=float(torch.linalg.vector_norm(total)),
        cosines=cos,
        n_conflicts=int((pair_cos < 0).sum()),
        n_pairs=int(pair_cos.numel()),
    )


def gradient_conflicts(x: Tensor, g: Tensor, experts: Tensor, gates: Tensor, shared: str) -> ConflictStats:
    """Split the shared matrix's gradient by expert and count conflicts.

    shared="B" (ALoRA): `experts` are the A_i (n, r, d_in); shared="A" (HydraLoRA): the B_i (n, d_out, r).
    """
    if shared == "B":
        comps = shared_B_components(x, g, experts, gates)
    elif shared == "A":
        comps = shared_A_components(x, g, experts, gates)
    else:
        raise ValueError(f"shared must be 'A' or 'B', got {shared!r}")
    return conflict_stats(comps)
