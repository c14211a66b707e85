"""The server's side of a run, engine-free: who takes part in a round, what each client is sent,
what the server remembers between rounds, and its checkpoint.

What a client is sent depends on how the method's broadcast is taken in (`client.MODES`):
- replace (FedIT, FedDPA, FedSA-LoRA, Fed-ALoRA, ZeroPadding): the latest broadcast. A client that
  sat rounds out simply takes the newest one.
- total (the decomposition, Fed-ALoRA and FedSA-LoRA* with different ranks): each round's broadcast
  is an increment to the accumulator B0 (A0). The server keeps the running total and sends that
  instead -- the same shape, so the same traffic -- and the client sets its accumulator to it, so a
  client that missed rounds loses nothing.
- stack (FLoRA): each round's stack is merged into the clients' base weights. The server keeps the
  stack of every round and sends a client the ones it has not merged yet (keys prefixed by their
  round, `stack_key`), so a client that missed rounds catches up, and one that already merged a
  round skips it.

The checkpoint is one safetensors file (tensors, plus the history as JSON in its metadata) written
atomically after every round: a run killed at any moment resumes from the last completed round.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .algorithms.base import FederatedMethod, Shape
from .client import ClientStateError, atomic_save, build_peft_model, mix_seed, read_safetensors, split_stack_key
from .config import FederatedConfig
from .keys import StateDict, parse_key
from .server import server_round as server_round_
from .validation import ClientUpdate, NotEnoughClientsError, Rejection

log = logging.getLogger("asymlora.federated")

CHECKPOINT = "server_state.safetensors"


def payload_mode(cfg: FederatedConfig) -> str:
    if cfg.method == "flora":
        return "stack"
    if cfg.uses_decomposition:
        return "total"
    return "replace"


def sample_clients(client_ids: Sequence[int], fraction: float, min_clients: int, seed: int,
                   server_round: int) -> list[int]:
    """A seeded sample of ceil(fraction x n) clients (at least min_clients), fixed by (seed, round) so a
    resumed run samples the same clients."""
    ids = sorted(int(c) for c in client_ids)
    k = min(len(ids), max(min_clients, math.ceil(fraction * len(ids) - 1e-9), 1))
    rng = random.Random(mix_seed(seed, 7919, server_round))
    return sorted(rng.sample(ids, k))


def stack_key(server_round: int, key: str) -> str:
    """FLoRA payloads carry every missing round's stack, each key prefixed by its round."""
    return f"{int(server_round)}::{key}"


def upload_pattern(cfg: FederatedConfig, rank: Optional[int] = None) -> dict[str, Shape]:
    """The shapes every upload must have (rank axes free), from the model's config alone: the
    adapter is built on the meta device, so no weights are loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models import resolve

    rank = rank or cfg.client_ranks[0]
    conf = AutoConfig.from_pretrained(resolve(cfg.model))
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(conf)
        model = build_peft_model(base, cfg, rank, seed=0)
    state = {k: v for k, v in model.state_dict().items() if parse_key(k) is not None}
    method = cfg.make_method(rank)
    return method.upload_pattern(method.client_upload(state))


@dataclass
class ServerState:
    """What the server holds between rounds. `round` is the last round completed (aggregated or
    failed); `payload_round` the last one whose aggregate exists."""

    cfg: FederatedConfig
    round: int = 0
    payload_round: int = 0
    latest: StateDict = field(default_factory=dict)
    stacks: dict[int, StateDict] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.method: FederatedMethod = self.cfg.make_method()
        self.mode = payload_mode(self.cfg)

    # ---- what a client is sent -----------------------------------------------------------
    def payload_for(self, client: int) -> tuple[StateDict, int]:
        """(tensors, the round they bring the client up to)."""
        if self.mode != "stack":
            return dict(self.latest), self.payload_round
        have = self.applied.get(int(client), 0)
        out: StateDict = {}
        for r in sorted(self.stacks):
            if r > have:
                out.update({stack_key(r, k): v for k, v in self.stacks[r].items()})
        return out, self.payload_round

    def round_broadcast(self) -> StateDict:
        """What an up-to-date client is sent after this round (for traffic accounting)."""
        if self.mode == "stack":
            return dict(self.stacks.get(self.payload_round, {}))
        return dict(self.latest)

    def mark_applied(self, client: int, payload_round: int) -> None:
        client = int(client)
        self.applied[client] = max(self.applied.get(client, 0), int(payload_round))

    def complete_round(self, server_round: int, broadcast: Mapping[str, torch.Tensor]) -> None:
        broadcast = {k: v.detach().to("cpu") for k, v in broadcast.items()}
        if self.mode == "replace":
            self.latest = broadcast
        elif self.mode == "total":
            self.latest = {k: (self.latest[k] + v if k in self.latest else v.clone()) for k, v in broadcast.items()}
        else:
            self.stacks[server_round] = broadcast
        self.payload_round = server_round

    # ---- checkpoint --------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        tensors = {f"latest::{k}": v for k, v in self.latest.items()}
        for r, stack in self.stacks.items():
            tensors.update({f"stack::{r}::{k}": v for k, v in stack.items()})
        meta = {"round": self.round, "payload_round": self.payload_round, "fingerprint": self.cfg.fingerprint(),
                "method": self.cfg.method, "mode": self.mode,
                "applied": {str(k): v for k, v in self.applied.items()}, "history": self.history}
        path = Path(directory) / CHECKPOINT
        atomic_save(tensors, path, meta)
        return path

    @classmethod
    def load(cls, directory: Path, cfg: FederatedConfig) -> Optional["ServerState"]:
        path = Path(directory) / CHECKPOINT
        if not path.exists():
            return None
        tensors, meta = read_safetensors(path)
        if meta.get("fingerprint") != cfg.fingerprint():
            raise ClientStateError(
                f"{path} was written by a run with another configuration (method {meta.get('method')!r}); "
                f"use a fresh output_dir, or --fresh to start over{cfg.resume_hint(meta.get('fingerprint'))}")
        state = cls(cfg, round=int(meta["round"]), payload_round=int(meta["payload_round"]),
                    applied={int(k): int(v) for k, v in meta.get("applied", {}).items()},
                    history=list(meta.get("history", [])))
        for key, value in tensors.items():
            kind, _, rest = key.partition("::")
            if kind == "latest":
                state.latest[rest] = value
            elif kind == "stack":
                r, _, k = rest.partition("::")
                state.stacks.setdefault(int(r), {})[k] = value
            else:
                raise ClientStateError(f"{path}: unexpected tensor {key!r}")
        return state


def numel(tensors: Mapping[str, Any]) -> int:
    return sum(int(math.prod(t.shape)) for t in tensors.values())


def close_round(state: ServerState, server_round: int, participants: Sequence[int],
                updates: Sequence[ClientUpdate], failures: Sequence[Rejection],
                train: Mapping[int, Mapping[str, float]], expected: Optional[Mapping[str, Shape]] = None,
                logger: Optional[logging.Logger] = None) -> dict[str, Any]:
    """Validate and aggregate one round's updates into `state`; the round's record for the history.
    Too few valid updates leave the state as it was and mark the round failed (with every reason)."""
    logger = logger or log
    record: dict[str, Any] = {
        "round": int(server_round), "participants": [int(c) for c in participants], "accepted": [],
        "rejected": [{"client": int(r.client_id), "reason": r.reason} for r in failures], "failed": None,
        "comm": None, "train": {str(c): dict(m) for c, m in train.items()}, "eval": {},
    }
    for r in failures:
        logger.warning("round %d: client %s: %s", server_round, r.client_id, r.reason)
    try:
        result = server_round_(state.method, updates, min_clients=state.cfg.min_clients, expected=expected,
                               logger=logger)
    except NotEnoughClientsError as exc:
        record["rejected"] += [{"client": int(r.client_id), "reason": r.reason} for r in exc.rejected]
        record["failed"] = (f"{len(updates) - len(exc.rejected)} valid update(s) of {len(participants)} "
                            f"sampled client(s), min_clients is {state.cfg.min_clients}")
        logger.error("round %d not aggregated: %s", server_round, record["failed"])
        return record
    state.complete_round(server_round, result.broadcast)
    record["accepted"] = sorted(int(c) for c in result.accepted)
    record["rejected"] += [{"client": int(r.client_id), "reason": r.reason} for r in result.rejected]
    record["comm"] = result.comm.to_dict()
    return record


__all__ = ["ServerState", "payload_mode", "sample_clients", "stack_key", "split_stack_key", "upload_pattern", "numel",
           "close_round", "CHECKPOINT"]
