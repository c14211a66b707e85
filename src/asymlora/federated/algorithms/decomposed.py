"""Heterogeneous ranks through the decomposition of SPEC §2: Fed-ALoRA, and FedSA-LoRA* mirrored.

Fed-ALoRA (B side), client i of rank r_i, intermediate width d_m:
    dW_i = (B0 + B2 B1) M A     A r_i x d_in, M d_m x r_i, B1 r_i x d_m, B2 d_out x r_i,
                                B0 d_out x d_m (accumulator, never trained, never sent)
  upload (B1, B2); the server averages B2 B1 (d_out x d_m for every client) into the broadcast,
  spelt as the B0 key; the client adds it to B0. A and M never leave the client.
FedSA-LoRA* (A side), the same with every matrix transposed:
    dW_i = B M (A0 + A1 A2)     B d_out x r_i, M r_i x d_m, A1 d_m x r_i, A2 r_i x d_in,
                                A0 d_m x d_in (accumulator)
  upload (A1, A2); the server averages A1 A2 (d_m x d_in); the client adds it to A0.

Keys follow the decomposed layer: `<module>.declora_B1.<adapter>` and so on.

Each round after the first, the client re-draws B1 (A1) and zeroes B2 (A2): the product, and so
dW, is unchanged across the round boundary. `client_apply` also zeroes B2 (A2) at once: the
client's own B2 B1 is already inside the average it has just added to B0, and counting it
twice would make the personalised model evaluated at the end of a round wrong.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from ..keys import StateDict, describe_keys, group_by_module, select, with_role
from .base import AdapterSpec, FederatedMethod, example_weights, kaiming_uniform, weighted_mean
from .payloads import RUNNING_TOTAL


class _Decomposed(FederatedMethod):
    left: str          # product = left @ right
    right: str
    accumulator: str
    redrawn: str       # re-drawn at round start
    zeroed: str        # zeroed at round start and after applying the broadcast
    shared_side: str   # the decomposed layer's side that is shared
    payload = RUNNING_TOTAL

    def build_model(self, base: torch.nn.Module, spec: AdapterSpec) -> Any:
        from peft import get_peft_model

        from ...adapters import DecomposedLoRAConfig

        return get_peft_model(base, DecomposedLoRAConfig(
            r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(spec.targets),
            intermediate_dim=spec.d_m, shared_side=self.shared_side, init_seed=spec.seed))

    def shared_product(self, factors: Mapping[str, torch.Tensor], roles: Mapping[str, str]) -> torch.Tensor:
        return factors[roles[self.left]] @ factors[roles[self.right]]

    def aggregate(self, uploads: Sequence[Mapping[str, torch.Tensor]], num_examples: Sequence[int]) -> StateDict:
        weights = example_weights(num_examples, len(uploads))
        groups = [group_by_module(up) for up in uploads]
        out: StateDict = {}
        for module, roles in groups[0].items():
            products = []
            for i, (up, g) in enumerate(zip(uploads, groups)):
                if module not in g or set(g[module]) != {self.left, self.right}:
                    raise ValueError(f"{self.name}: upload {i} lacks {self.left}/{self.right} of module {module!r}")
                products.append(self.shared_product(up, g[module]))
                if products[-1].shape != products[0].shape:
                    raise ValueError(f"{self.name}: module {module!r}: upload {i}'s {self.left} {self.right} is "
                                     f"{tuple(products[-1].shape)}, upload 0's {tuple(products[0].shape)}; "
                                     "d_m and the layer shape must agree across clients")
            out[with_role(roles[self.left], self.accumulator)] = weighted_mean(products, weights)
        for i, g in enumerate(groups):
            if g.keys() != groups[0].keys():
                raise ValueError(f"{self.name}: upload {i} covers other modules than upload 0: "
                                 f"{describe_keys(set(g) ^ set(groups[0]))}")
        return out

    def client_apply(self, state: Mapping[str, torch.Tensor], broadcast: Mapping[str, torch.Tensor]) -> StateDict:
        new = dict(state)
        for key, value in broadcast.items():
            if key not in state:
                raise KeyError(f"{self.name}: the broadcast carries {key!r}, which the client state lacks; "
                               f"its keys: {describe_keys(state)}")
            own = state[key]
            if value.shape != own.shape:
                raise ValueError(f"{self.name}: broadcast {key!r} has shape {tuple(value.shape)}, "
                                 f"the client's accumulator {tuple(own.shape)}")
            new[key] = own + value.detach().to(device=own.device, dtype=own.dtype)
            zero_key = with_role(key, self.zeroed)
            if zero_key in state:
                new[zero_key] = torch.zeros_like(state[zero_key])
        return new

    def round_start(self, state: Mapping[str, torch.Tensor], server_round: int,
                    generator: Optional[torch.Generator] = None) -> StateDict:
        new = dict(state)
        if server_round <= 1:
            return new
        for module, roles in group_by_module(select(state, (self.redrawn, self.zeroed))).items():
            for role in (self.redrawn, self.zeroed):
                if role not in roles:
                    raise KeyError(f"{self.name}: module {module!r} has no {role} in the client state")
            r = state[roles[self.redrawn]]
            new[roles[self.redrawn]] = kaiming_uniform(r.shape, r, generator)
            new[roles[self.zeroed]] = torch.zeros_like(state[roles[self.zeroed]])
        return new


class FedALoRAHet(_Decomposed):
    name = "fedalora-het"
    upload_roles = ("declora_B1", "declora_B2")
    frozen_roles = ("declora_B0",)
    rank_axes = {"declora_B1": (0,), "declora_B2": (1,)}
    rank_pairs = (("declora_B2", 1, "declora_B1", 0),)
    left, right, accumulator = "declora_B2", "declora_B1", "declora_B0"
    redrawn, zeroed = "declora_B1", "declora_B2"
    shared_side = "B"


class FedSALoRAHet(_Decomposed):
    name = "fedsa-het"
    upload_roles = ("declora_A1", "declora_A2")
    frozen_roles = ("declora_A0",)
    rank_axes = {"declora_A1": (1,), "declora_A2": (0,)}
    rank_pairs = (("declora_A1", 1, "declora_A2", 0),)
    left, right, accumulator = "declora_A1", "declora_A2", "declora_A0"
    redrawn, zeroed = "declora_A1", "declora_A2"
    shared_side = "A"


def effective_delta(state: Mapping[str, torch.Tensor], module: str) -> torch.Tensor:
    """dW (without the alpha/r scaling) of one decomposed module, either side, from its factors."""
    roles = group_by_module({k: v for k, v in state.items() if k.startswith(module + ".")}).get(module)
    if not roles:
        raise KeyError(f"no decomposed factors of module {module!r} in the state")
    f = lambda role: state[roles[role]]  # noqa: E731
    if "declora_B0" in roles:
        return (f("declora_B0") + f("declora_B2") @ f("declora_B1")) @ f("declora_M") @ f("declora_A")
    if "declora_A0" in roles:
        return f("declora_B") @ f("declora_M") @ (f("declora_A0") + f("declora_A1") @ f("declora_A2"))
    raise KeyError(f"module {module!r} has neither declora_B0 nor declora_A0: {sorted(roles)}")
