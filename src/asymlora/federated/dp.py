"""Differential privacy on what clients upload: the settings, what they require of a method, and the
privacy budget after each round. The clipping and the noise are Flower's functions (`flower/dp.py`).

DP works on updates: under DP a client sends its update, the upload minus what it would have sent at
the round's start, so one clipping norm bounds each client's influence whatever its factors' scale.
The server combines the updates by their unweighted mean (the sensitivity the noise is calibrated
to; weighting by examples would let one client count more) and keeps the running total; a client's
shared factors are its initial ones plus that total (so every client must start from one draw,
`client_init: shared`). For the decomposition an update is the product B2 B1 itself (B2 is zero
at the round's start), so `upload: product` is needed and the accumulator works as without DP.

- central: clients sampled with rate q; each update clipped to C, on the server (`clipping: server`)
  or on the client before it is sent (`client`), or with a norm adapted each round towards a
  quantile of the update norms (`adaptive`, Andrew et al. 2021); Gaussian noise of std z C / n on
  the mean of n updates. The accountant composes T rounds of the subsampled Gaussian mechanism.
- local: each client clips its update to C and adds noise of std z C itself, before it leaves;
  the server sees only noised updates. The accountant composes T rounds at q = 1, per client.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from .privacy import PrivacyError, check, epsilon

MODES = ("central", "local")
CLIPPINGS = ("server", "client", "adaptive")


@dataclass(frozen=True)
class DPSettings:
    mode: str = "central"
    clipping: str = "server"
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: Optional[float] = None

    @classmethod
    def from_setting(cls, value: Any) -> Optional["DPSettings"]:
        """The `dp:` mapping of a config; None when absent."""
        if value in (None, {}, ""):
            return None
        if not isinstance(value, Mapping):
            raise PrivacyError(f"dp: expected a mapping (mode, clipping, clip_norm, noise_multiplier, delta, ...), "
                               f"got {value!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(value) - known)
        if unknown:
            raise PrivacyError(f"dp: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
        numbers = {k: v for k, v in value.items() if k not in ("mode", "clipping")}
        for k, v in numbers.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise PrivacyError(f"dp.{k}: expected a finite number, got {v!r}")
        s = cls(**{k: (float(v) if k in numbers and v is not None else v) for k, v in value.items()})
        s.check()
        return s

    def check(self) -> None:
        if self.mode not in MODES:
            raise PrivacyError(f"dp.mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.clipping not in CLIPPINGS:
            raise PrivacyError(f"dp.clipping: expected one of {', '.join(CLIPPINGS)}, got {self.clipping!r}")
        if self.mode == "local" and self.clipping != "server" and self.clipping != "client":
            raise PrivacyError("dp.clipping: local DP clips on the client; adaptive clipping is central only")
        if not self.clip_norm > 0:
            raise PrivacyError(f"dp.clip_norm: must be > 0, got {self.clip_norm!r}")
        if self.noise_multiplier < 0:
            raise PrivacyError(f"dp.noise_multiplier: must be >= 0, got {self.noise_multiplier!r}")
        if not 0 < self.delta < 1:
            raise PrivacyError(f"dp.delta: must be in (0, 1), got {self.delta!r}")
        if not 0 <= self.target_quantile <= 1:
            raise PrivacyError(f"dp.target_quantile: must be in [0, 1], got {self.target_quantile!r}")
        if not self.clip_learning_rate > 0:
            raise PrivacyError(f"dp.clip_learning_rate: must be > 0, got {self.clip_learning_rate!r}")

    @property
    def clips_on_client(self) -> bool:
        return self.mode == "local" or self.clipping == "client"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def budget_after(settings: DPSettings, rounds: int, sample_rate: float) -> float:
    """Epsilon after `rounds` rounds (central: subsampled at `sample_rate`; local: per client, q = 1)."""
    q = 1.0 if settings.mode == "local" else sample_rate
    check(settings.noise_multiplier, q, rounds, settings.delta)
    return epsilon(settings.noise_multiplier, q, rounds, settings.delta)
