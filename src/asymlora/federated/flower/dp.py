"""Differential privacy with Flower's own clipping and noise functions
(`flwr.supercore.differential_privacy`, the ones under its DP strategy wrappers and client mods): a
combine step for the server, and a ClientApp mod for clipping (and local noise) on the client. Our
strategy runs its own round loop, so Flower's wrappers cannot wrap it; these are the functions they
call, in the same order. The settings and the accountant are in `federated/dp.py`."""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import (
    adaptive_clip_inputs_inplace, add_gaussian_noise_inplace, clip_inputs_inplace, compute_adaptive_noise_params,
    compute_stdv, get_norm,
)

from ..dp import DPSettings
from ..keys import StateDict
from .records import ARRAYS, CONFIG

CLIP_NORM = "dp-clip-norm"       # the train message's clipping norm (adaptive clipping changes it)
NOISE_SEED = "dp-noise-seed"     # seeds the client's local noise: a repeated round sends the same


def _arrays(update: StateDict, keys: Sequence[str]) -> list[np.ndarray]:
    return [update[k].detach().to("cpu", torch.float64).numpy().copy() for k in keys]


class DPCombine:
    """The server's combine step under central or local DP; `clip_norm` is state (adaptive)."""

    def __init__(self, settings: DPSettings, clip_norm: Optional[float] = None) -> None:
        self.settings = settings
        self.clip_norm = float(clip_norm if clip_norm is not None else settings.clip_norm)
        self.last: dict[str, Any] = {}
        self.seed = 0
        """Seeds the round's noise (set by the round loop before each aggregation)."""

    def __call__(self, uploads: Sequence[StateDict], num_examples: Sequence[int]) -> StateDict:
        s, n, seed = self.settings, len(uploads), self.seed
        keys = sorted(uploads[0])
        rng_state = np.random.get_state()
        np.random.seed(seed % 2**32)    # Flower's noise draws from NumPy's global generator
        try:
            updates = [_arrays(u, keys) for u in uploads]
            norms = [get_norm(u) for u in updates]
            clipped = 0
            if s.mode == "central" and s.clipping == "server":
                for u, norm in zip(updates, norms):
                    if norm > 0:   # Flower's clip divides by the norm
                        clip_inputs_inplace(u, self.clip_norm)
                clipped = sum(norm > self.clip_norm for norm in norms)
            elif s.mode == "central" and s.clipping == "adaptive":
                clipped = sum(adaptive_clip_inputs_inplace(u, self.clip_norm) for u, norm in zip(updates, norms)
                              if norm > 0)
            mean = [sum(layer) / n for layer in zip(*updates)]
            used_norm = self.clip_norm
            if s.mode == "central":
                z = s.noise_multiplier
                if s.clipping == "adaptive":
                    count_std, z = compute_adaptive_noise_params(s.noise_multiplier, n, s.clipped_count_stddev)
                add_gaussian_noise_inplace(mean, compute_stdv(z, self.clip_norm, n))
                if s.clipping == "adaptive":   # move the norm towards the target quantile of the update norms
                    unclipped = (n - clipped + np.random.normal(0, count_std)) / n
                    self.clip_norm *= math.exp(-s.clip_learning_rate * (unclipped - s.target_quantile))
        finally:
            np.random.set_state(rng_state)
        self.last = {"clip_norm": used_norm, "next_clip_norm": self.clip_norm, "update_norm_max": max(norms),
                     "update_norms": [float(norm) for norm in norms],
                     "clipped": int(clipped) if s.mode == "central" else None}
        like = uploads[0]
        return {k: torch.from_numpy(np.asarray(a)).to(like[k].dtype) for k, a in zip(keys, mean)}


def client_dp_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """A ClientApp mod: under client-side clipping or local DP (the run config's `dp`), clips the update
    a train reply carries to the norm the message names and, under local DP, adds the noise (seeded
    by the message, so a repeated round sends the same). A no-op otherwise."""
    reply = call_next(msg, ctx)
    raw = ctx.run_config.get("dp", "")
    settings = DPSettings.from_setting(json.loads(raw) if isinstance(raw, str) and raw else raw or None)
    if settings is None or not settings.clips_on_client:
        return reply
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error() or ARRAYS not in reply.content:
        return reply
    config = msg.content[CONFIG]
    record = reply.content[ARRAYS]
    keys = list(record.keys())
    arrays = [record[k].numpy().astype(np.float64) for k in keys]
    clip_norm = float(config.get(CLIP_NORM, settings.clip_norm))
    if get_norm(arrays) > 0:   # Flower's clip divides by the norm
        clip_inputs_inplace(arrays, clip_norm)
    if settings.mode == "local":
        rng_state = np.random.get_state()
        np.random.seed(int(config.get(NOISE_SEED, 0)) % 2**32)
        try:
            add_gaussian_noise_inplace(arrays, settings.noise_multiplier * clip_norm)
        finally:
            np.random.set_state(rng_state)
    dtypes = [record[k].numpy().dtype for k in keys]
    reply.content[ARRAYS] = ArrayRecord({k: Array(a.astype(d)) for k, a, d in zip(keys, arrays, dtypes)})
    return reply
