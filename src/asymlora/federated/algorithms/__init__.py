"""Each federated method as plain torch on adapter state dicts, one file per method.

`build_method(name, heterogeneous=...)` picks the class: fedalora and fedsa switch to the
decomposed layer (SPEC §2) when clients' ranks differ; fedit and feddpa need one rank.
"""

from __future__ import annotations

from typing import Any

from .base import FederatedMethod, example_weights, fedavg, weighted_mean
from .decomposed import FedALoRAHet, FedSALoRAHet, effective_delta
from .feddpa import FedDPA
from .fedalora import FedALoRA
from .fedit import FedIT
from .fedsa import FedSALoRA
from .flora import FLoRA, merge_base_deltas
from .zeropadding import ZeroPadding

METHOD_NAMES: tuple[str, ...] = ("fedit", "feddpa", "fedsa", "fedalora", "zeropadding", "flora")

_HOMOGENEOUS = {"fedit": FedIT, "feddpa": FedDPA, "fedsa": FedSALoRA, "fedalora": FedALoRA,
                "zeropadding": ZeroPadding, "flora": FLoRA}
_HETEROGENEOUS = {"fedsa": FedSALoRAHet, "fedalora": FedALoRAHet, "zeropadding": ZeroPadding, "flora": FLoRA}


def build_method(name: str, *, heterogeneous: bool = False, **options: Any) -> FederatedMethod:
    """The method object for `name`; `options` go to its constructor (FedDPA's adapter names,
    FLoRA's client scaling)."""
    if name not in _HOMOGENEOUS:
        raise ValueError(f"unknown federated method {name!r}; known: {', '.join(METHOD_NAMES)}")
    table = _HETEROGENEOUS if heterogeneous else _HOMOGENEOUS
    if name not in table:
        raise ValueError(f"{name} averages A and B element-wise and needs one rank for all clients; "
                         "for different ranks use zeropadding, flora, fedalora or fedsa")
    return table[name](**options)


__all__ = [
    "FederatedMethod", "FedIT", "FedDPA", "FedSALoRA", "FedALoRA", "FedALoRAHet", "FedSALoRAHet",
    "ZeroPadding", "FLoRA", "METHOD_NAMES", "build_method", "merge_base_deltas", "effective_delta",
    "example_weights", "fedavg", "weighted_mean",
]
