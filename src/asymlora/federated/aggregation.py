"""Which rule combines the clients' uploads, and whether it can work: plain settings and checks
(the computation itself is Flower's, in `flower/robust.py`).

FedAvg is the weighted mean; median, trimmed mean, Krum, Multi-Krum and Bulyan trade that mean for
robustness to a few clients sending anything at all (Byzantine clients). They apply to a method
whose broadcast is a combination of the uploads themselves -- same keys, same shapes, one vector
per client -- not to FLoRA's stacks, ZeroPadding's padded ranks or the decomposition's factors
(whose product, not the factors, is averaged: `upload: product` makes the uploads that product).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

RULES: tuple[str, ...] = ("fedavg", "median", "trimmed_mean", "krum", "multikrum", "bulyan")


class AggregationError(ValueError):
    """A rule that cannot combine this method's uploads, or this many of them."""


@dataclass(frozen=True)
class AggregationRule:
    name: str = "fedavg"
    trim_fraction: float = 0.2
    """trimmed_mean: the fraction cut at each end of every coordinate, in [0, 0.5)."""
    byzantine: int = 0
    """krum, multikrum, bulyan: the number of Byzantine clients the rule assumes among the sampled."""
    keep: Optional[int] = None
    """multikrum: how many of the best-scored uploads are averaged (default: n - byzantine)."""

    def check(self) -> None:
        if self.name not in RULES:
            raise AggregationError(f"aggregation: unknown rule {self.name!r}; known: {', '.join(RULES)}")
        if not 0.0 <= float(self.trim_fraction) < 0.5:
            raise AggregationError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")
        if isinstance(self.byzantine, bool) or not isinstance(self.byzantine, int) or self.byzantine < 0:
            raise AggregationError(f"byzantine_clients must be an integer >= 0, got {self.byzantine!r}")
        if self.keep is not None and (isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1):
            raise AggregationError(f"multikrum_keep must be a positive integer, got {self.keep!r}")

    def needed(self) -> int:
        """The fewest uploads the rule works with, for its assumed number of Byzantine clients."""
        f = self.byzantine
        return {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(self.name, 1)

    def check_count(self, n: int) -> None:
        """Raise when `n` uploads are too few for the rule (with its reason)."""
        if n < self.needed():
            raise AggregationError(
                f"{self.name} with byzantine_clients {self.byzantine} needs at least {self.needed()} uploads "
                f"({'4f + 3' if self.name == 'bulyan' else '2f + 3'}), got {n}")
        if self.name == "multikrum" and self.keep is not None and self.keep > n - self.byzantine:
            raise AggregationError(f"multikrum_keep {self.keep} exceeds the {n - self.byzantine} uploads it can "
                                   f"trust among {n} (byzantine_clients {self.byzantine})")
