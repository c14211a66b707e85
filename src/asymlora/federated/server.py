"""One server round, engine-free: validate the uploads, aggregate the survivors, and measure the
traffic from the tensors themselves, so every engine logs the same figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .algorithms.base import FederatedMethod, Shape
from .comm import MeasuredComm, measure_comm
from .keys import StateDict
from .validation import ClientUpdate, Rejection, validate_updates


@dataclass
class RoundResult:
    broadcast: StateDict
    accepted: list[str]
    rejected: list[Rejection]
    comm: MeasuredComm


def server_round(method: FederatedMethod, updates: Sequence[ClientUpdate], *, min_clients: int = 1,
                 expected: Optional[Mapping[str, Shape]] = None,
                 logger: Optional[logging.Logger] = None, combine: Optional[Any] = None) -> RoundResult:
    """`combine`: another rule than the method's weighted mean (see `aggregation`); raises
    `AggregationError` when it cannot combine these uploads."""
    checked = validate_updates(method, updates, expected=expected, min_clients=min_clients, logger=logger)
    uploads = [u.tensors for u in checked.accepted]
    counts = [u.num_examples for u in checked.accepted]
    broadcast = method.aggregate(uploads, counts) if combine is None else method.aggregate_with(combine, uploads, counts)
    return RoundResult(
        broadcast=broadcast,
        accepted=[u.client_id for u in checked.accepted],
        rejected=checked.rejected,
        comm=measure_comm(uploads, broadcast),
    )
