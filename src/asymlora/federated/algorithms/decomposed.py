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

Upload modes (`upload`, SPEC §2 "Beyond the paper"): `factors` sends (B1, B2) as the paper does,
(d_out + d_m) r_i per module; `product` sends B2 B1 itself, d_out d_m whatever the rank, spelt as
the accumulator key (it is the increment to B0); `auto` sends, module by module, whichever is
smaller for the client's rank (the product when they tie). The server averages B2 B1 either way,
so the aggregate is the same to float rounding; with products it is a weighted sum of same-shape
uploads, which secure aggregation and robust aggregators need.

Each round after the first, the client re-draws B1 (A1) and zeroes B2 (A2): the product, and so
dW, is unchanged across the round boundary. `client_apply` also zeroes B2 (A2) at once: the
client's own B2 B1 is already inside the average it has just added to B0, and counting it
twice would make the personalised model evaluated at the end of a round wrong.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from ..keys import StateDict, describe_keys, group_by_module, parse_key, select, with_role
from .base import AdapterSpec, FederatedMethod, Shape, example_weights, kaiming_uniform, weighted_mean
from ..comm import UPLOADS, sends_product
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

    def __init__(self, upload: str = "factors", rank: Optional[int] = None) -> None:
        """`rank`: the client's, when the method is built for one client (lets `check_upload` hold
        an auto-mode product to the rank); the server's method needs none."""
        if upload not in UPLOADS:
            raise ValueError(f"upload: expected one of {', '.join(UPLOADS)}, got {upload!r}")
        self.upload, self.rank = upload, rank

    def shared_product(self, factors: Mapping[str, torch.Tensor], roles: Mapping[str, str]) -> torch.Tensor:
        if self.accumulator in roles:
            return factors[roles[self.accumulator]]
        return factors[roles[self.left]] @ factors[roles[self.right]]

    # ---- the upload, in either form ------------------------------------------------------
    def client_upload(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        factors = super().client_upload(state)
        out: StateDict = {}
        for roles in group_by_module(factors).values():
            left, right = factors[roles[self.left]], factors[roles[self.right]]
            if sends_product(self.upload, left.shape[0] * right.shape[1], left.numel() + right.numel()):
                out[with_role(roles[self.left], self.accumulator)] = left @ right
            else:
                out[roles[self.left]], out[roles[self.right]] = left, right
        return out

    def combinable(self) -> str:
        """Products are same-shape uploads whose weighted mean is the broadcast; factors are not."""
        if self.upload == "product":
            return ""
        return (f"it averages the products {self.left} {self.right} of the factors it receives, and upload: "
                f"{self.upload} sends factors; set upload: product to send that product")

    def upload_forms(self) -> tuple[tuple[str, ...], ...]:
        forms = {"factors": ((self.left, self.right),), "product": ((self.accumulator,),)}
        return forms.get(self.upload, forms["factors"] + forms["product"])

    def describe_upload(self) -> str:
        product = f"{self.accumulator}, the product {self.left} {self.right}"
        what = {"factors": f"{self.left}/{self.right}", "product": product}.get(
            self.upload, f"{self.left}/{self.right} or {product}")
        return f"{what}, with upload: {self.upload}"

    def check_upload(self, upload: Mapping[str, torch.Tensor]) -> list[str]:
        """Also, under `auto`, that each module came in its smaller form (a product only when the
        method knows the client's rank: a product carries none)."""
        problems = super().check_upload(upload)
        if problems or self.upload != "auto":
            return problems
        for module, roles in group_by_module(upload).items():
            if self.accumulator in roles:
                rows, cols = upload[roles[self.accumulator]].shape
                if self.rank is not None and not sends_product("auto", rows * cols, (rows + cols) * self.rank):
                    problems.append(f"module {module!r} sends the product {rows * cols} values but its factors at "
                                    f"rank {self.rank} are {(rows + cols) * self.rank}: upload: auto sends the smaller")
            else:
                left, right = upload[roles[self.left]], upload[roles[self.right]]
                rows, cols = left.shape[0], right.shape[1]
                if sends_product("auto", rows * cols, left.numel() + right.numel()):
                    problems.append(f"module {module!r} sends factors of rank {left.shape[1]} "
                                    f"({left.numel() + right.numel()} values) where the product has {rows * cols}: "
                                    "upload: auto sends the smaller")
        return problems

    def pattern_for(self, upload: Mapping[str, torch.Tensor], expected: Mapping[str, Shape]) -> dict[str, Shape]:
        """`expected` with each module rewritten into the form `upload` sends it in: the product
        (rows, cols) for the factors (rows, r), (r, cols), and back."""
        sent = group_by_module({k: v for k, v in upload.items() if isinstance(k, str) and parse_key(k)})
        out: dict[str, Shape] = {}
        for module, roles in group_by_module(expected).items():
            as_product = self.accumulator in sent.get(module, {}) or (module not in sent and self.upload == "product")
            if self.accumulator in roles:
                rows, cols = expected[roles[self.accumulator]]
                key = roles[self.accumulator]
            else:
                rows, cols = expected[roles[self.left]][0], expected[roles[self.right]][1]
                key = roles[self.left]
            if as_product:
                out[with_role(key, self.accumulator)] = (rows, cols)
            else:
                out[with_role(key, self.left)], out[with_role(key, self.right)] = (rows, None), (None, cols)
        return out

    def aggregate(self, uploads: Sequence[Mapping[str, torch.Tensor]], num_examples: Sequence[int]) -> StateDict:
        weights = example_weights(num_examples, len(uploads))
        groups = [group_by_module(up) for up in uploads]
        out: StateDict = {}
        for module, roles in groups[0].items():
            products = []
            for i, (up, g) in enumerate(zip(uploads, groups)):
                if module not in g or set(g[module]) not in ({self.left, self.right}, {self.accumulator}):
                    raise ValueError(f"{self.name}: upload {i} lacks {self.left}/{self.right} (or their product "
                                     f"{self.accumulator}) of module {module!r}")
                products.append(self.shared_product(up, g[module]))
                if products[-1].shape != products[0].shape:
                    raise ValueError(f"{self.name}: module {module!r}: upload {i}'s {self.left} {self.right} is "
                                     f"{tuple(products[-1].shape)}, upload 0's {tuple(products[0].shape)}; "
                                     "d_m and the layer shape must agree across clients")
            out[with_role(next(iter(roles.values())), self.accumulator)] = weighted_mean(products, weights)
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
