"""One server round, engine-free: validate the uploads, aggregate the survivors, and measure the
traffic from the tensors themselves, so every engine logs the same figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

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
                 logger: Optional[logging.Logger] = None) -> RoundResult:
    checked = validate_updates(method, updates, expected=expected, min_clients=min_clients, logger=logger)
    uploads = [u.tensors for u in checked.accepted]
    broadcast = method.aggregate(uploads, [u.num_examples for u in checked.accepted])
    return RoundResult(
        broadcast=broadcast,
        accepted=[u.client_id for u in checked.accepted],
        rejected=checked.rejected,
        comm=measure_comm(uploads, broadcast),
    )
