"""A simulated attacker, for evaluating aggregation rules: the named clients send corrupted uploads.
Their own training and private state are untouched; only what leaves them changes, so a researcher
can measure what an attack does to the others and what each rule buys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from .keys import StateDict

KINDS: tuple[str, ...] = ("scale", "sign_flip", "gaussian", "nan")
DEFAULT_FACTOR = {"scale": 100.0, "sign_flip": 1.0, "gaussian": 1.0, "nan": 1.0}
"""scale: the upload times the factor; sign_flip: times -factor; gaussian: noise of std factor x the
tensor's own std replaces it; nan: every value NaN (the server's validation rejects it)."""


@dataclass(frozen=True)
class Attack:
    clients: tuple[int, ...] = ()
    kind: str = "scale"
    factor: Optional[float] = None
    seed: int = field(default=0, compare=False)

    @classmethod
    def from_setting(cls, value: Any, n_clients: int) -> Optional["Attack"]:
        """The `byzantine:` mapping of a config ({clients, kind, factor}); None when absent."""
        if value in (None, {}, ""):
            return None
        if not isinstance(value, Mapping):
            raise ValueError(f"byzantine: expected a mapping {{clients, kind, factor}}, got {value!r}")
        unknown = sorted(set(value) - {"clients", "kind", "factor"})
        if unknown:
            raise ValueError(f"byzantine: unknown key(s) {unknown}; known: clients, kind, factor")
        clients = value.get("clients", [])
        if not isinstance(clients, list) or not clients or any(
                isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_clients for c in clients):
            raise ValueError(f"byzantine.clients: expected a non-empty list of client ids in 0..{n_clients - 1}, "
                             f"got {clients!r}")
        kind = value.get("kind", "scale")
        if kind not in KINDS:
            raise ValueError(f"byzantine.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        factor = value.get("factor")
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                                   or not torch.isfinite(torch.tensor(float(factor)))):
            raise ValueError(f"byzantine.factor: expected a finite number, got {factor!r}")
        return cls(tuple(sorted(set(clients))), kind, None if factor is None else float(factor))

    def corrupt(self, upload: StateDict, generator: torch.Generator) -> StateDict:
        """What client sends instead of `upload`."""
        factor = DEFAULT_FACTOR[self.kind] if self.factor is None else self.factor
        out: StateDict = {}
        for key, t in upload.items():
            if self.kind == "scale":
                out[key] = t * factor
            elif self.kind == "sign_flip":
                out[key] = -factor * t
            elif self.kind == "gaussian":
                noise = torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.dtype)
                out[key] = noise * factor * (t.float().std() if t.numel() > 1 else 1.0)
            else:
                out[key] = torch.full_like(t, float("nan"))
        return out
