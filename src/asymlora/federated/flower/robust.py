"""Robust aggregation by Flower's own functions (the ones behind `flwr.server.strategy`'s FedMedian,
FedTrimmedAvg, Krum and Bulyan), applied to the tensors a method averages. Each client's upload is
one vector (its tensors in key order), so Krum's distances and Bulyan's selection see whole updates.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from flwr.server.strategy.aggregate import (
    aggregate, aggregate_bulyan, aggregate_krum, aggregate_median, aggregate_trimmed_avg,
)

from ..aggregation import AggregationRule
from ..keys import StateDict

Combine = Callable[[Sequence[StateDict], Sequence[int]], StateDict]


def make_combine(rule: AggregationRule) -> Combine:
    """`combine(uploads, num_examples) -> broadcast` for `rule`; uploads share keys and shapes."""
    rule.check()

    def combine(uploads: Sequence[StateDict], num_examples: Sequence[int]) -> StateDict:
        rule.check_count(len(uploads))
        keys = sorted(uploads[0])
        results = [([u[k].detach().to("cpu", torch.float64).numpy() for k in keys], int(n))
                   for u, n in zip(uploads, num_examples)]
        if rule.name == "fedavg":
            arrays = aggregate(results)
        elif rule.name == "median":
            arrays = aggregate_median(results)
        elif rule.name == "trimmed_mean":
            arrays = aggregate_trimmed_avg(results, rule.trim_fraction)
        elif rule.name == "krum":
            arrays = aggregate_krum(results, rule.byzantine, 0)
        elif rule.name == "multikrum":
            arrays = aggregate_krum(results, rule.byzantine, rule.keep or len(results) - rule.byzantine)
        else:
            arrays = aggregate_bulyan(list(results), rule.byzantine, aggregate_krum, to_keep=0)
        like = uploads[0]
        return {k: torch.from_numpy(np.asarray(a)).to(like[k].dtype) for k, a in zip(keys, arrays)}

    return combine
