"""Tensors on Flower's wire: ArrayRecords of NumPy arrays (serialised with allow_pickle=False, so
nothing received is ever unpickled), and the names of every record and config key we use."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from ..keys import StateDict

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

SERVER_ROUND = "server-round"
PAYLOAD_ROUND = "payload-round"
BASE_ROUND = "base-round"        # the round the server believes the client holds
TRAINED_ROUND = "trained-round"  # the last round the client trained in since BASE_ROUND (0: none)
ACCEPTED = "update-accepted"     # its update of TRAINED_ROUND: 1 aggregated, 0 rejected, -1 not sent
REASON = "reject-reason"
WRITE_PREDICTIONS = "write-predictions"
STALE = "stale"                  # reply: the client holds less than BASE_ROUND (APPLIED_ROUND says what)

PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"
APPLIED_ROUND = "applied-round"
RANK = "rank"
SCORE = "score"
TASK_SCORE = "score::"  # + task name


class WireError(ValueError):
    """An ArrayRecord that cannot be turned into tensors."""


def to_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """float32 NumPy arrays (bfloat16 has no NumPy dtype), one Array per key."""
    rec = ArrayRecord()
    for key, t in tensors.items():
        t = t.detach().to("cpu")
        if t.dtype == torch.bfloat16:
            t = t.float()
        rec[key] = Array.from_numpy_ndarray(t.contiguous().numpy())
    return rec


def from_record(rec: ArrayRecord) -> StateDict:
    out: StateDict = {}
    for key, arr in rec.items():
        try:
            nd = arr.numpy()
        except (TypeError, ValueError) as exc:
            raise WireError(f"array {key!r}: cannot be read ({exc})") from exc
        if nd.dtype == object or not np.issubdtype(nd.dtype, np.number):
            raise WireError(f"array {key!r}: dtype {nd.dtype} is not numeric")
        out[key] = torch.from_numpy(np.array(nd, copy=True))
    return out


def record_numel(rec: ArrayRecord) -> int:
    """Parameters carried, from the arrays' declared shapes."""
    return sum(int(math.prod(arr.shape)) for arr in rec.values())


def record_bytes(rec: ArrayRecord) -> int:
    """Bytes of the serialised arrays, as they travel."""
    return sum(len(arr.data) for arr in rec.values())


def payload_rounds(rec: ArrayRecord, payload_round: int, mode: str) -> dict[int, tuple[int, int]]:
    """(parameters, bytes) of a payload per round it carries: a stacked payload carries several
    rounds (keys `<round>::...`), any other only the newest."""
    out: dict[int, tuple[int, int]] = {}
    for key, arr in rec.items():
        r = int(key.partition("::")[0]) if mode == "stack" else int(payload_round)
        params, nbytes = out.get(r, (0, 0))
        out[r] = (params + int(math.prod(arr.shape)), nbytes + len(arr.data))
    return out
