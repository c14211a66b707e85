"""FLoRA (Wang et al., 2024): stacking, noise-free aggregation for clients of any rank.

The server concatenates the uploads along the rank axis, A_i scaled by p_i:
    A_stack = [p_1 A_1; ...; p_n A_n]   (sum r_i) x d_in
    B_stack = [B_1, ..., B_n]           d_out x (sum r_i)
so that B_stack A_stack = sum_i p_i B_i A_i exactly (averaging A and B separately would add
the cross terms B_i A_j). Every client merges B_stack A_stack into its frozen base weight and
starts a fresh LoRA of its own rank. The client's scaling alpha/r_i is folded into the B it
uploads, so the stack carries each client's effective update whatever its alpha and rank.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ..keys import StateDict, describe_keys, group_by_module, select
from .base import FederatedMethod, example_weights, kaiming_uniform
from .payloads import STACK


class FLoRA(FederatedMethod):
    name = "flora"
    payload = STACK
    upload_roles = ("lora_A", "lora_B")
    rank_axes = {"lora_A": (0,), "lora_B": (1,)}
    rank_pairs = (("lora_A", 0, "lora_B", 1),)

    def __init__(self, scaling: float = 1.0) -> None:
        self.scaling = float(scaling)

    def client_upload(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        up = super().client_upload(state)
        if self.scaling != 1.0:
            for key, roles in group_by_module(up).items():
                up[roles["lora_B"]] = up[roles["lora_B"]] * self.scaling
        return up

    def aggregate(self, uploads: Sequence[Mapping[str, torch.Tensor]], num_examples: Sequence[int]) -> StateDict:
        weights = example_weights(num_examples, len(uploads))
        groups = [group_by_module(up) for up in uploads]
        out: StateDict = {}
        for module, roles in groups[0].items():
            for i, g in enumerate(groups):
                if g.get(module) != roles:
                    raise ValueError(f"flora: upload {i} does not carry the same factors of module {module!r} "
                                     f"as upload 0")
            a_key, b_key = roles["lora_A"], roles["lora_B"]
            out[a_key] = torch.cat([up[a_key] * p for up, p in zip(uploads, weights)], dim=0)
            out[b_key] = torch.cat([up[b_key] for up in uploads], dim=1)
        for i, g in enumerate(groups):
            if g.keys() != groups[0].keys():
                raise ValueError(f"flora: upload {i} covers other modules than upload 0: "
                                 f"{describe_keys(set(g) ^ set(groups[0]))}")
        return out

    def base_weight_deltas(self, broadcast: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        deltas: dict[str, torch.Tensor] = {}
        for module, roles in group_by_module(broadcast).items():
            if set(roles) != {"lora_A", "lora_B"}:
                raise ValueError(f"flora: broadcast module {module!r} carries {sorted(roles)}, "
                                 "expected lora_A and lora_B")
            deltas[module] = broadcast[roles["lora_B"]] @ broadcast[roles["lora_A"]]
        return deltas

    def combinable(self) -> str:
        return "it stacks the uploads along the rank axis; nothing is averaged"

    def client_apply(self, state: Mapping[str, torch.Tensor], broadcast: Mapping[str, torch.Tensor]) -> StateDict:
        """The stack goes into the base weight (see `base_weight_deltas`); it already contains this
        client's own p_i-weighted update, so the client's LoRA is emptied (B = 0) to count it once."""
        new = dict(state)
        for key in broadcast:
            if key not in state:
                raise KeyError(f"flora: the broadcast carries {key!r}, which the client state lacks; "
                               f"its keys: {describe_keys(state)}")
        for roles in group_by_module(broadcast).values():
            b_key = roles["lora_B"]
            new[b_key] = torch.zeros_like(state[b_key])
        return new

    def round_start(self, state: Mapping[str, torch.Tensor], server_round: int,
                    generator: Optional[torch.Generator] = None) -> StateDict:
        """A fresh LoRA each round after the first: A re-drawn, B zero."""
        new = dict(state)
        if server_round <= 1:
            return new
        for roles in group_by_module(select(state, self.upload_roles)).values():
            if "lora_A" in roles:
                a = state[roles["lora_A"]]
                new[roles["lora_A"]] = kaiming_uniform(a.shape, a, generator)
            if "lora_B" in roles:
                new[roles["lora_B"]] = torch.zeros_like(state[roles["lora_B"]])
        return new


@torch.no_grad()
def merge_base_deltas(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> None:
    """Add each module's d_out x d_in delta to its frozen base weight, in place.

    Module names are those of the adapter keys (PEFT's `base_model.model....q_proj`); a PEFT
    LoRA layer keeps its frozen weight in `.base_layer`."""
    for name, delta in deltas.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise KeyError(f"flora: the model has no module {name!r} to merge into") from exc
        base = getattr(module, "base_layer", module)
        weight = getattr(base, "weight", None)
        if weight is None or weight.shape != delta.shape:
            got = None if weight is None else tuple(weight.shape)
            raise ValueError(f"flora: module {name!r} has weight shape {got}, the delta {tuple(delta.shape)}")
        weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
