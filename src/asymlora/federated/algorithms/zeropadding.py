"""ZeroPadding: FedIT for clients of different ranks. The server pads every A_i (rows) and B_i
(columns) with zeros up to the largest rank that round, averages, and broadcasts rank r_max;
each client keeps the first r_i rows of A and columns of B (zeros where r_i exceeds that round's
r_max, as when the largest-rank clients sat the round out)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..keys import StateDict, describe_keys, parse_key
from .base import FederatedMethod, example_weights, same_keys, weighted_mean

_RANK_AXIS = {"lora_A": 0, "lora_B": 1}


def pad_rank(t: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """Zero-pad `t` along `axis` (0: rows of A, 1: columns of B) to `rank`."""
    missing = rank - t.shape[axis]
    if missing == 0:
        return t
    return F.pad(t, (0, missing) if axis == 1 else (0, 0, 0, missing))


class ZeroPadding(FederatedMethod):
    name = "zeropadding"
    upload_roles = ("lora_A", "lora_B")
    rank_axes = {"lora_A": (0,), "lora_B": (1,)}
    rank_pairs = (("lora_A", 0, "lora_B", 1),)

    def aggregate(self, uploads: Sequence[Mapping[str, torch.Tensor]], num_examples: Sequence[int]) -> StateDict:
        weights = example_weights(num_examples, len(uploads))
        out: StateDict = {}
        for key in same_keys(uploads, self.name):
            axis = _RANK_AXIS[parse_key(key).role]
            fixed = 1 - axis
            size = uploads[0][key].shape[fixed]
            for i, up in enumerate(uploads):
                if up[key].shape[fixed] != size:
                    raise ValueError(f"zeropadding: {key!r} has shape {tuple(up[key].shape)} in upload {i}; "
                                     f"only its rank axis ({axis}) may differ from upload 0's "
                                     f"{tuple(uploads[0][key].shape)}")
            r_max = max(up[key].shape[axis] for up in uploads)
            out[key] = weighted_mean([pad_rank(up[key], axis, r_max) for up in uploads], weights)
        return out

    def combinable(self) -> str:
        return ("it pads each client's factors to the round's largest rank before averaging; another rule would "
                "treat the padding zeros as values")

    def client_apply(self, state: Mapping[str, torch.Tensor], broadcast: Mapping[str, torch.Tensor]) -> StateDict:
        new = dict(state)
        for key, value in broadcast.items():
            if key not in state:
                raise KeyError(f"zeropadding: the broadcast carries {key!r}, which the client state lacks; "
                               f"its keys: {describe_keys(state)}")
            own = state[key]
            axis = _RANK_AXIS[parse_key(key).role]
            r = own.shape[axis]
            if value.shape[1 - axis] != own.shape[1 - axis]:
                raise ValueError(f"zeropadding: broadcast {key!r} has shape {tuple(value.shape)}, which cannot "
                                 f"be cut to the client's {tuple(own.shape)}")
            # a round without the largest-rank clients broadcasts a smaller r_max: the missing
            # rank slots averaged nothing but padding, so they are zero
            kept = pad_rank(value, axis, r).narrow(axis, 0, r)
            new[key] = kept.detach().to(device=own.device, dtype=own.dtype).clone()
        return new
