"""Causal-LM loss computed only where there are labels, a chunk of tokens at a time.

Why: a small model's vocabulary dominates its step. SmolLM2-135M has 49,152 output tokens for a
576-wide hidden state, so the LM head is about a fifth of the forward FLOPs, and its float32 logits
for 64 x 512 tokens take 6 GiB. With the loss on the response only, most positions need no logits at
all. Here the model returns its final hidden states (its LM head swapped for a pass-through), the
positions with a label are gathered, and their logits are made and consumed chunk by chunk under
activation checkpointing, so at most one chunk of logits exists at a time, in the forward and in
the backward pass. The value equals Transformers' `ForCausalLMLoss` (shifted labels, -100 ignored,
logits upcast to float32, sum over `num_items_in_batch` when the Trainer gives it, else the mean).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.tokenize import IGNORE_INDEX

__all__ = ["chunked_causal_lm_loss", "HiddenStatesHead", "ChunkedLossHead", "install_chunked_loss"]


def _chunk_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  targets: torch.Tensor, autocast_dtype: Optional[torch.dtype]) -> torch.Tensor:
    # The Trainer's mixed precision wraps only the model's forward, and its outputs come back as
    # float32: the head must run as it would have inside that forward (autocast, or the weight's dtype).
    if autocast_dtype is not None:
        with torch.autocast(hidden.device.type, dtype=autocast_dtype):
            logits = F.linear(hidden, weight, bias)
    else:
        logits = F.linear(hidden.to(weight.dtype), weight, bias)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 4096,
    num_items_in_batch: Union[int, torch.Tensor, None] = None,
    bias: Optional[torch.Tensor] = None,
    ignore_index: int = IGNORE_INDEX,
    autocast_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Next-token cross-entropy of `hidden` (batch, seq, d) through the head `weight` (vocab, d).

    `labels` (batch, seq) are aligned with the inputs (the shift happens here, as in Transformers).
    `autocast_dtype`: the mixed-precision dtype the model's forward ran under, if any.
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (batch, seq, d) and labels (batch, seq); got {tuple(hidden.shape)} "
                         f"and {tuple(labels.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"head weight {tuple(weight.shape)} does not match hidden size {hidden.shape[-1]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = F.pad(labels, (0, 1), value=ignore_index)[:, 1:].to(hidden.device)
    keep = targets != ignore_index
    h = hidden[keep]
    y = targets[keep]
    total = h.sum().float() * 0.0  # a zero that is still part of the graph when no position has a label
    for start in range(0, h.shape[0], chunk_size):
        h_c, y_c = h[start:start + chunk_size], y[start:start + chunk_size]
        if torch.is_grad_enabled() and (h_c.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_ce_sum, h_c, weight, bias, y_c, autocast_dtype, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(h_c, weight, bias, y_c, autocast_dtype)
    if num_items_in_batch is None:
        return total / keep.sum()  # 0/0 = NaN with no label, as Transformers' mean
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class HiddenStatesHead(nn.Module):
    """Stands in for a model's LM head and returns its input: the model's `logits` are then its final
    hidden states. Keeps the real head as a child, so it still moves with the model."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


class ChunkedLossHead:
    """The Trainer's `compute_loss_func` for a model whose head is a `HiddenStatesHead`."""

    def __init__(self, stand_in: HiddenStatesHead, chunk_size: int,
                 autocast_dtype: Optional[torch.dtype] = None) -> None:
        self.stand_in = stand_in
        self.chunk_size = chunk_size
        self.autocast_dtype = autocast_dtype

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        hidden = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        head = self.stand_in.head
        return chunked_causal_lm_loss(hidden, head.weight, labels, self.chunk_size, num_items_in_batch,
                                      bias=head.bias, autocast_dtype=self.autocast_dtype)


def install_chunked_loss(model: nn.Module, chunk_size: int,
                         autocast_dtype: Optional[torch.dtype] = None) -> tuple[ChunkedLossHead, Any]:
    """Swap `model`'s LM head for a pass-through; returns the loss function and an `undo()` callable.

    Refused where a plain linear head followed by cross-entropy is not the model's loss (logit
    soft-capping or scaling would be skipped).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"loss_chunk_size: {type(base).__name__} applies {attr}={value} to its logits; "
                             "the chunked loss would skip it (set loss_chunk_size: 0)")
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not nn.Linear:  # subclasses (quantised heads) compute something else
        kind = f"{type(head).__module__}.{type(head).__qualname__}"
        raise ValueError(f"loss_chunk_size: {type(base).__name__}'s output layer is {kind}, not a plain "
                         "torch.nn.Linear LM head (set loss_chunk_size: 0)")
    stand_in = HiddenStatesHead(head)
    base.set_output_embeddings(stand_in)

    def undo() -> None:
        base.set_output_embeddings(head)

    return ChunkedLossHead(stand_in, chunk_size, autocast_dtype), undo
