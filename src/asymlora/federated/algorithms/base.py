"""The protocol every federated method follows, and the FedAvg arithmetic they share.

A method is a small stateless object that both sides use: the client calls `round_start`,
trains, calls `client_upload`, and later `client_apply` with the server's broadcast; the server
calls `aggregate`. Everything is a plain `dict[str, Tensor]` of adapter factors, so the Flower
strategies and the in-process engine drive every method the same way, and the maths can be
checked by hand without either of them.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, ContextManager, Mapping, Optional, Sequence

import torch

from ..keys import ROLES, StateDict, describe_keys, group_by_module, parse_key, select
from .payloads import REPLACE, Payload

Shape = tuple[Optional[int], ...]
"""An expected shape; None marks a rank axis, free to differ from client to client."""


@dataclass(frozen=True)
class AdapterSpec:
    """The adapter one client trains: its rank and the run's adapter settings."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    seed: int
    d_m: int = 16


class FederatedMethod(ABC):
    """What a client uploads, how the server combines uploads, what the client keeps.

    Subclasses declare `upload_roles` (the factors sent), `rank_axes` (which axes of an
    uploaded factor may differ between clients of different ranks) and `rank_pairs` (factors of
    one module whose rank axes must agree), and write `aggregate` and `client_apply`.
    """

    name: ClassVar[str]
    upload_roles: ClassVar[tuple[str, ...]]
    frozen_roles: ClassVar[tuple[str, ...]] = ()
    rank_axes: ClassVar[Mapping[str, tuple[int, ...]]] = {}
    rank_pairs: ClassVar[tuple[tuple[str, int, str, int], ...]] = ()
    adapter: Optional[str] = None
    payload: ClassVar[Payload] = REPLACE
    """How the server keeps the broadcast and a client takes it in (see `payloads`)."""

    # ---- the client's model ------------------------------------------------------------
    def build_model(self, base: torch.nn.Module, spec: AdapterSpec) -> Any:
        """`base` (modified in place) wrapped in this method's adapter; PEFT's LoRA unless the
        method needs another layer."""
        from peft import get_peft_model

        return get_peft_model(base, lora_config(spec))

    def training_phases(self, trainable: Sequence[str]) -> list[list[str]]:
        """The keys trained together, phase after phase, in one round (one phase unless the method
        trains its parts in turn)."""
        return [list(trainable)]

    def evaluation_context(self, client: Any) -> ContextManager[Optional[Any]]:
        """Entered around a client's evaluation; what it yields may have `summary()` metrics."""
        return contextlib.nullcontext()

    # ---- client side -----------------------------------------------------------------
    def client_upload(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        """Detached copies of the factors this method sends; nothing else leaves the client."""
        up = select(state, self.upload_roles, self.adapter)
        if not up:
            which = f" of adapter {self.adapter!r}" if self.adapter else ""
            raise KeyError(
                f"{self.name}: the client state has no {'/'.join(self.upload_roles)} factors{which} "
                f"to upload; its keys: {describe_keys(state) or 'none'}"
            )
        return {k: v.detach().clone() for k, v in up.items()}

    @abstractmethod
    def client_apply(self, state: Mapping[str, torch.Tensor], broadcast: Mapping[str, torch.Tensor]) -> StateDict:
        """The client's new state after receiving `broadcast` (the input is left untouched)."""

    def round_start(self, state: Mapping[str, torch.Tensor], server_round: int,
                    generator: Optional[torch.Generator] = None) -> StateDict:
        """Reset what the method re-initialises at the start of round `server_round` (1-based).
        Round 1 starts from the adapter's own initialisation, so it changes nothing."""
        return dict(state)

    def trainable_keys(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        """Keys the local optimiser updates (accumulators such as B0 are not trained)."""
        return [k for k in state if (p := parse_key(k)) is not None and p.role not in self.frozen_roles]

    def base_weight_deltas(self, broadcast: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """module -> d_out x d_in update to add to the frozen base weight (only FLoRA has any)."""
        return {}

    # ---- server side -----------------------------------------------------------------
    @abstractmethod
    def aggregate(self, uploads: Sequence[Mapping[str, torch.Tensor]], num_examples: Sequence[int]) -> StateDict:
        """The broadcast, from the clients' uploads weighted by their numbers of local examples."""

    def combinable(self) -> str:
        """Why another rule than the weighted mean (median, Krum..., secure aggregation's sum) cannot
        combine this method's uploads; "" when it can (the broadcast is a mean of the uploads
        themselves, same keys and shapes for every client)."""
        return "its broadcast is not a weighted mean of the uploads"

    def aggregate_with(self, combine: Any, uploads: Sequence[Mapping[str, torch.Tensor]],
                       num_examples: Sequence[int]) -> StateDict:
        """The broadcast by `combine(uploads, num_examples)` instead of the weighted mean."""
        from ..aggregation import AggregationError

        reason = self.combinable()
        if reason:
            raise AggregationError(f"{self.name}: {reason}")
        example_weights(num_examples, len(uploads))
        for key in same_keys(uploads, self.name):
            if len({tuple(u[key].shape) for u in uploads}) > 1:
                raise AggregationError(f"{self.name}: {key!r} differs in shape between uploads; the rule needs one "
                                       "shape for all clients")
        return combine([dict(u) for u in uploads], list(num_examples))

    # ---- accounting and checks ---------------------------------------------------------
    @staticmethod
    def count_params(tensors: Mapping[str, torch.Tensor]) -> int:
        return sum(int(t.numel()) for t in tensors.values())

    def upload_pattern(self, upload: Mapping[str, torch.Tensor]) -> dict[str, Shape]:
        """The shapes another client's upload must have, rank axes left free."""
        out: dict[str, Shape] = {}
        for key, t in upload.items():
            parts = parse_key(key)
            free = self.rank_axes.get(parts.role, ()) if parts else ()
            out[key] = tuple(None if i in free else int(n) for i, n in enumerate(t.shape))
        return out

    def upload_forms(self) -> tuple[tuple[str, ...], ...]:
        """The sets of factors one module's upload may consist of (one, unless clients may send
        alternatives, as the decomposition's product)."""
        return (self.upload_roles,)

    def describe_upload(self) -> str:
        return "only " + "/".join(self.upload_roles)

    def pattern_for(self, upload: Mapping[str, torch.Tensor], expected: Mapping[str, Shape]) -> dict[str, Shape]:
        """The pattern `upload` must match: `expected`, in the form this upload takes."""
        return dict(expected)

    def check_upload(self, upload: Mapping[str, torch.Tensor]) -> list[str]:
        """Problems with one upload taken alone: foreign keys, non-matrices, inconsistent ranks."""
        problems: list[str] = []
        allowed = {role for form in self.upload_forms() for role in form}
        for key, t in upload.items():
            parts = parse_key(key) if isinstance(key, str) else None
            if parts is None or parts.role not in allowed or (
                    self.adapter is not None and parts.adapter != self.adapter):
                problems.append(f"unexpected key {key!r} ({self.name} uploads {self.describe_upload()}"
                                + (f" of adapter {self.adapter!r})" if self.adapter else ")"))
                continue
            if not isinstance(t, torch.Tensor):
                problems.append(f"{key!r} is a {type(t).__name__}, not a tensor")
            elif not t.is_floating_point():
                problems.append(f"{key!r} has dtype {t.dtype}, expected a floating-point tensor")
            elif t.dim() != 2:
                problems.append(f"{key!r} has shape {tuple(t.shape)}, expected a matrix")
        if problems:
            return problems
        try:
            groups = group_by_module(upload)
        except KeyError as exc:
            return [str(exc.args[0])]
        forms = [set(form) for form in self.upload_forms()]
        for module, roles in groups.items():
            if set(roles) not in forms:
                sent = "/".join(sorted(roles))
                part = next((form for form in forms if set(roles) < form), None)
                problems.append(f"module {module!r} sends {sent} without {'/'.join(sorted(part - set(roles)))}"
                                if part else f"module {module!r} sends {sent}, expected "
                                + " or ".join("/".join(f) for f in self.upload_forms()))
            for ra, axa, rb, axb in self.rank_pairs:
                if ra in roles and rb in roles:
                    na, nb = upload[roles[ra]].shape[axa], upload[roles[rb]].shape[axb]
                    if na != nb:
                        problems.append(f"module {module!r}: {ra} has rank {na} but {rb} has rank {nb}")
        return problems


def lora_config(spec: AdapterSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(spec.targets))


# ---- shared arithmetic ------------------------------------------------------------------
def example_weights(num_examples: Sequence[int], n_uploads: int) -> list[float]:
    """FedAvg weights p_i = n_i / sum_j n_j."""
    if len(num_examples) != n_uploads:
        raise ValueError(f"{n_uploads} uploads but {len(num_examples)} example counts")
    if n_uploads == 0:
        raise ValueError("nothing to aggregate: no uploads")
    for i, n in enumerate(num_examples):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"upload {i}: num_examples must be a positive integer, got {n!r}")
    total = float(sum(num_examples))
    return [n / total for n in num_examples]


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_i w_i t_i, accumulated in at least float32, returned in the first tensor's dtype."""
    acc_dtype = accumulation_dtype(tensors[0])
    out = torch.zeros(tensors[0].shape, dtype=acc_dtype, device=tensors[0].device)
    for t, w in zip(tensors, weights):
        out.add_(t.detach().to(device=out.device, dtype=acc_dtype), alpha=w)
    return out.to(tensors[0].dtype)


def same_keys(uploads: Sequence[Mapping[str, torch.Tensor]], method: str) -> list[str]:
    """The common key list; every upload must carry exactly the same keys."""
    keys = list(uploads[0])
    ref = set(keys)
    for i, up in enumerate(uploads[1:], start=1):
        got = set(up)
        if got != ref:
            missing, extra = ref - got, got - ref
            raise ValueError(
                f"{method}: upload {i} has different keys from upload 0"
                + (f"; missing {describe_keys(missing)}" if missing else "")
                + (f"; unexpected {describe_keys(extra)}" if extra else "")
            )
    return keys


def fedavg(uploads: Sequence[Mapping[str, torch.Tensor]], num_examples: Sequence[int], method: str) -> StateDict:
    """Key-wise weighted average of identically shaped uploads."""
    weights = example_weights(num_examples, len(uploads))
    out: StateDict = {}
    for key in same_keys(uploads, method):
        shape = uploads[0][key].shape
        for i, up in enumerate(uploads):
            if up[key].shape != shape:
                raise ValueError(f"{method}: {key!r} has shape {tuple(up[key].shape)} in upload {i} "
                                 f"but {tuple(shape)} in upload 0; {method} needs one rank for all clients")
        out[key] = weighted_mean([up[key] for up in uploads], weights)
    return out


def replace_from(state: Mapping[str, torch.Tensor], broadcast: Mapping[str, torch.Tensor], method: str) -> StateDict:
    """The state with every broadcast factor written over the client's own copy."""
    new = dict(state)
    for key, value in broadcast.items():
        if key not in state:
            raise KeyError(f"{method}: the broadcast carries {key!r}, which the client state lacks; "
                           f"its keys: {describe_keys(state)}")
        if value.shape != state[key].shape:
            raise ValueError(f"{method}: broadcast {key!r} has shape {tuple(value.shape)}, "
                             f"the client's has {tuple(state[key].shape)}")
        new[key] = value.detach().to(device=state[key].device, dtype=state[key].dtype).clone()
    return new


def kaiming_uniform(shape: torch.Size | tuple[int, ...], like: torch.Tensor,
                    generator: Optional[torch.Generator]) -> torch.Tensor:
    """PEFT's LoRA A initialisation (kaiming-uniform, a = sqrt 5), drawn on CPU for seedability."""
    t = torch.empty(tuple(shape), dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)
    return t.to(device=like.device, dtype=like.dtype)


__all__ = [
    "FederatedMethod", "AdapterSpec", "lora_config", "Shape", "ROLES", "example_weights", "weighted_mean", "fedavg",
    "replace_from", "kaiming_uniform", "same_keys",
]
