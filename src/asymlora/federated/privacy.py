"""Privacy budgets of the Gaussian mechanism in federated rounds, from Google's `dp-accounting`.

One round of central DP: the server samples each client with probability q (Poisson sampling),
clips each update to norm C and adds Gaussian noise of standard deviation z C to the sum. T rounds
compose; the RDP accountant turns the composition into (epsilon, delta). Local DP is the same
mechanism on each client's own upload, without amplification by sampling (q = 1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass


class PrivacyError(ValueError):
    """A privacy setting outside its domain; the message names it."""


@dataclass(frozen=True)
class Budget:
    noise_multiplier: float
    sample_rate: float
    rounds: int
    delta: float
    epsilon: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def check(noise_multiplier: float | None, sample_rate: float, rounds: int, delta: float) -> None:
    if noise_multiplier is not None and not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(sample_rate) and 0 < sample_rate <= 1):
        raise PrivacyError(f"sample rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PrivacyError(f"rounds must be a positive integer, got {rounds!r}")
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


def _event(noise_multiplier: float, sample_rate: float, rounds: int):
    import dp_accounting

    step = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        step = dp_accounting.PoissonSampledDpEvent(sample_rate, step)
    return dp_accounting.SelfComposedDpEvent(step, rounds)


def _quiet_absl() -> None:
    """dp-accounting logs a warning per fractional RDP order it skips; the result is unaffected."""
    logging.getLogger("absl").setLevel(logging.ERROR)


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after `rounds` rounds at `delta` (infinite without noise)."""
    from dp_accounting.rdp import RdpAccountant

    check(noise_multiplier, sample_rate, rounds, delta)
    if noise_multiplier == 0:
        return math.inf
    _quiet_absl()
    accountant = RdpAccountant()
    accountant.compose(_event(noise_multiplier, sample_rate, rounds))
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier whose epsilon after `rounds` is at most `target_epsilon`."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    check(None, sample_rate, rounds, delta)
    _quiet_absl()
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"target epsilon must be a finite number > 0, got {target_epsilon!r}")
    return float(dp_accounting.calibrate_dp_mechanism(
        RdpAccountant, lambda z: _event(z, sample_rate, rounds), target_epsilon, delta,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4))


def budget(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> Budget:
    return Budget(noise_multiplier, sample_rate, rounds, delta, epsilon(noise_multiplier, sample_rate, rounds, delta))
