"""Server-side checks on incoming updates, before anything is averaged.

One bad client (wrong shapes, NaN/Inf, foreign or missing keys, a nonsense example count) must
not poison the round: its update is set aside with a specific, logged reason, and the round goes
on with the others as long as `min_clients` remain.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch

from .algorithms.base import FederatedMethod, Shape
from .keys import describe_keys

log = logging.getLogger("asymlora.federated")


@dataclass(frozen=True)
class ClientUpdate:
    client_id: str
    tensors: Mapping[str, torch.Tensor]
    num_examples: int


@dataclass(frozen=True)
class Rejection:
    client_id: str
    reason: str


@dataclass
class ValidationResult:
    accepted: list[ClientUpdate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


class NotEnoughClientsError(RuntimeError):
    """Fewer valid updates than the configured minimum: the round cannot be aggregated."""

    def __init__(self, message: str, rejected: Sequence[Rejection]) -> None:
        super().__init__(message)
        self.rejected = list(rejected)


def _shape_ok(shape: torch.Size, expected: Shape) -> bool:
    return len(shape) == len(expected) and all(e is None or e == n for n, e in zip(shape, expected))


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join("r" if n is None else str(n) for n in shape) + ")"


def compare_to_pattern(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, Shape]) -> list[str]:
    """Missing and unexpected keys, and shapes that differ from `expected` (r: any rank)."""
    problems: list[str] = []
    missing = set(expected) - set(tensors)
    extra = set(tensors) - set(expected)
    if missing:
        problems.append(f"missing keys {describe_keys(missing)}")
    if extra:
        problems.append(f"unexpected keys {describe_keys(extra)}")
    for key in sorted(set(expected) & set(tensors)):
        if not _shape_ok(tensors[key].shape, expected[key]):
            problems.append(f"{key!r} has shape {tuple(tensors[key].shape)}, expected {_fmt(expected[key])}")
    return problems


def nonfinite_problems(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    problems = []
    for key, t in tensors.items():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(t).sum())
            n_inf = int(t.numel() - finite.sum()) - n_nan
            problems.append(f"{key!r} has {n_nan} NaN and {n_inf} Inf values")
    return problems


def _basic_problems(method: FederatedMethod, update: ClientUpdate) -> list[str]:
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        return [f"num_examples must be a positive integer, got {n!r}"]
    if not isinstance(update.tensors, Mapping) or not update.tensors:
        return ["the update carries no tensors"]
    problems = method.check_upload(update.tensors)
    if not problems:
        problems = nonfinite_problems(update.tensors)
    return problems


def validate_updates(method: FederatedMethod, updates: Sequence[ClientUpdate], *,
                     expected: Optional[Mapping[str, Shape]] = None, min_clients: int = 1,
                     logger: Optional[logging.Logger] = None) -> ValidationResult:
    """Split `updates` into accepted and rejected (with reasons), or raise NotEnoughClientsError.

    `expected` is the shape every upload must have (build it with `method.upload_pattern` on a
    template upload; rank axes None). Without it, the shapes most clients agree on this round
    are the reference, so one odd client out is still caught.
    """
    logger = logger or log
    result = ValidationResult()
    sound: list[ClientUpdate] = []
    for up in updates:
        problems = _basic_problems(method, up)
        if problems:
            result.rejected.append(Rejection(up.client_id, "; ".join(problems)))
        else:
            sound.append(up)
    if expected is None and sound:
        patterns = [tuple(sorted(method.upload_pattern(up.tensors).items())) for up in sound]
        counts = Counter(patterns)
        best = max(counts.values())
        expected = dict(next(p for p in patterns if counts[p] == best))
    for up in sound:
        problems = compare_to_pattern(up.tensors, method.pattern_for(up.tensors, expected or {}))
        if problems:
            result.rejected.append(Rejection(up.client_id, "; ".join(problems)))
        else:
            result.accepted.append(up)
    order = {up.client_id: i for i, up in enumerate(updates)}
    result.rejected.sort(key=lambda r: order.get(r.client_id, 0))
    for rej in result.rejected:
        logger.warning("%s: rejected the update of client %s: %s", method.name, rej.client_id, rej.reason)
    if len(result.accepted) < min_clients:
        detail = "; ".join(f"client {r.client_id}: {r.reason}" for r in result.rejected) or "none rejected"
        raise NotEnoughClientsError(
            f"{method.name}: only {len(result.accepted)} of {len(updates)} updates are valid, "
            f"min_clients is {min_clients} ({detail})", result.rejected)
    return result
