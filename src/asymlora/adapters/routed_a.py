"""ALoRA's routed path, s B sum_i softmax(W_g x)_i A_i dropout(x), as one autograd node.

Why: the same maths through autograd's generic nodes costs a third more than PEFT's LoRA at equal
budget, most of it in small passes over the (tokens x d_in) input gradient: the router's share is
made as a tensor of its own and added, and the gating's broadcast-multiply-sum keeps expanded
copies for its backward. Here the backward writes the A experts' share of the input gradient, masks
it for dropout, and adds the router's share into the same buffer in place (`addmm_`). The values
and gradients are those of `RoutedLayer`'s generic path (tests compare both, and gradcheck this).

Used for a routed ALoRA adapter in training (no fixed gate, one dtype for input and adapter, no
autocast, dropout that is `nn.Dropout` or none); every other case takes the generic path. The dropout mask is drawn as
`torch.nn.functional.dropout` draws it on the CPU (Bernoulli(1 - p), scaled by 1 / (1 - p)).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


def routed_gates(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The router's gates from its logits: the softmax in `dtype` (the wider of float32 and x's)."""
    return logits.to(dtype).softmax(-1)


def dropout_noise(x: torch.Tensor, dropout: nn.Module) -> Optional[torch.Tensor]:
    """The scaled Bernoulli mask `dropout` would apply to x now; None when it is the identity."""
    if not isinstance(dropout, nn.Dropout) or not dropout.training or dropout.p == 0:
        return None
    keep = 1.0 - dropout.p
    return torch.empty_like(x).bernoulli_(keep).div_(keep)


class RoutedAFunction(torch.autograd.Function):
    """out = base + (sum_i w_i (x*noise) A_i^T) B^T with w = s softmax(x W_g^T); x is (T, d_in), base
    (T, d_out) the base layer's output or None. Adding into `base` inside the B GEMM (`addmm`) saves
    the adapter's output a tensor and a pass of its own."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, A: torch.Tensor, W_g: torch.Tensor, B: torch.Tensor,
                noise: Optional[torch.Tensor], scale: float, gate_dtype: torch.dtype,
                base: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        n, r = W_g.shape[0], B.shape[1]
        xd = x if noise is None else x * noise
        h = xd @ A.t()                                      # (T, n r): every A expert in one GEMM
        gates = routed_gates(x @ W_g.t(), gate_dtype)       # (T, n)
        w = gates.to(h.dtype) * scale
        g = torch.bmm(w.unsqueeze(1), h.view(-1, n, r)).squeeze(1)  # (T, r): sum_i w_i h_i
        ctx.save_for_backward(x, xd, noise, A, W_g, B, h, gates, g)
        ctx.scale = scale
        ctx.mark_non_differentiable(gates)
        out = g @ B.t() if base is None else torch.addmm(base, g, B.t())
        return out, gates

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, _grad_gates: Any) -> tuple[Optional[torch.Tensor], ...]:
        x, xd, noise, A, W_g, B, h, gates, g = ctx.saved_tensors
        n, r, s = W_g.shape[0], B.shape[1], ctx.scale
        need_x, need_A, need_Wg, need_B = ctx.needs_input_grad[:4]
        # both with the narrow (r) operand transposed: BLAS is several times slower on a (d, r) row-major
        # right operand or a transposed (T, d) left one at r = 8 than on these layouts
        grad_B = (g.t() @ grad_out).t() if need_B else None
        gg = grad_out @ B.t().contiguous().t()              # (T, r)
        w = gates.to(h.dtype) * s
        grad_h = (w.unsqueeze(2) * gg.unsqueeze(1)).view(-1, n * r)
        # d/dw_i = <h_i, gg>; through the scale and the softmax to the router's logits
        grad_w = torch.bmm(h.view(-1, n, r), gg.unsqueeze(2)).squeeze(2).to(gates.dtype) * s
        grad_logits = (gates * (grad_w - (grad_w * gates).sum(-1, keepdim=True))).to(W_g.dtype)
        grad_A = grad_h.t() @ xd if need_A else None
        grad_Wg = grad_logits.t() @ x if need_Wg else None
        grad_x = None
        if need_x:
            grad_x = grad_h @ A
            if noise is not None:
                grad_x.mul_(noise)
            grad_x.addmm_(grad_logits, W_g)                 # the router's share, in the same buffer
        grad_base = grad_out if ctx.needs_input_grad[7:8] == (True,) else None   # absent when no base was given
        return grad_x, grad_A, grad_Wg, grad_B, None, None, None, grad_base


def routed_a_output(x: torch.Tensor, A: torch.Tensor, W_g: torch.Tensor, B: torch.Tensor,
                    dropout: nn.Module, scale: float, gate_dtype: torch.dtype,
                    base: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the adapter's contribution (..., d_out), plus `base` when given, the gates (..., n)) for x (..., d_in)."""
    flat = x.reshape(-1, x.shape[-1])
    flat_base = None if base is None else base.reshape(flat.shape[0], -1)
    out, gates = RoutedAFunction.apply(flat, A, W_g, B, dropout_noise(flat, dropout), float(scale), gate_dtype,
                                       flat_base)
    return out.view(*x.shape[:-1], -1), gates.view(*x.shape[:-1], -1)
