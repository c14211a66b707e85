"""The server's side of a run, engine-free: who takes part in a round, what each client is sent,
what the server remembers between rounds, and its checkpoint.

What the server keeps of each round and sends a client is the method's (`FederatedMethod.payload`:
replace, running total or stack; see `algorithms.payloads`). The server also keeps, per client, the
last round the client said it holds, so a payload goes to each client once.

The checkpoint is one safetensors file (tensors, plus the history as JSON in its metadata) written
atomically twice a round: once the round is aggregated -- before anything of it leaves the server --
and once it is evaluated. A run killed at any moment resumes where it stopped and never redoes an
aggregation a client may already have taken in.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .aggregation import AggregationError
from .algorithms.base import FederatedMethod, Shape
from .algorithms.payloads import REPLACE, RUNNING_TOTAL, split_stack_key, stack_key
from .client import ClientStateError, atomic_save, build_peft_model, mix_seed, read_safetensors
from .config import FederatedConfig
from .keys import StateDict, parse_key
from .server import server_round as server_round_
from .validation import ClientUpdate, NotEnoughClientsError, Rejection

log = logging.getLogger("asymlora.federated")

CHECKPOINT = "server_state.safetensors"


def sample_clients(client_ids: Sequence[int], fraction: float, min_clients: int, seed: int,
                   server_round: int) -> list[int]:
    """A seeded sample of ceil(fraction x n) clients (at least min_clients), fixed by (seed, round) so a
    resumed run samples the same clients."""
    ids = sorted(int(c) for c in client_ids)
    k = min(len(ids), max(min_clients, math.ceil(fraction * len(ids) - 1e-9), 1))
    rng = random.Random(mix_seed(seed, 7919, server_round))
    return sorted(rng.sample(ids, k))


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


def partition_sizes(cfg: FederatedConfig) -> dict[int, int]:
    """The most examples each client can train on, where the server can read the partitions (the
    in-process engine and simulations; a deployment's server usually cannot, and checks nothing)."""
    from ..data.records import load_examples

    sizes: dict[int, int] = {}
    root = Path(cfg.data_dir) if cfg.data_dir else None
    for i in range(cfg.n_clients):
        path = root / f"local_training_{i}.json" if root else None
        if path is None or not path.is_file():
            continue
        try:
            n = len(load_examples(str(path)))
        except (OSError, ValueError):
            continue
        sizes[i] = min(n, cfg.max_train_examples) if cfg.max_train_examples else n
    return sizes


@dataclass
class ServerState:
    """What the server holds between rounds. `round`: the last round aggregated (or failed);
    `evaluated`: the last round whose evaluation is done (or not due); `kept`: the method's memory of
    the broadcasts, round -> tensors; `applied`: per client, the last round it said it holds."""

    cfg: FederatedConfig
    round: int = 0
    evaluated: int = 0
    kept: dict[int, StateDict] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.method: FederatedMethod = self.cfg.make_method()
        self.payload = self.method.payload
        if self.cfg.dp_settings is not None and self.payload is REPLACE:
            self.payload = RUNNING_TOTAL   # of the noised mean updates (`dp`)
        self.dp_clip_norm: Optional[float] = None
        """Adaptive clipping's current norm (checkpointed: a resumed run goes on with it)."""
        self.combine: Optional[Any] = None
        """Another rule than the method's weighted mean (set by the round loop; see `aggregation`)."""

    @property
    def payload_round(self) -> int:
        """The last round whose aggregate exists (0: none yet)."""
        return max(self.kept) if self.kept else 0

    @property
    def latest(self) -> StateDict:
        """What the server keeps of the last aggregated round (the broadcast, the running total, or
        that round's stack)."""
        return dict(self.kept.get(self.payload_round, {}))

    # ---- what a client is sent -----------------------------------------------------------
    def payload_for(self, client: int) -> tuple[StateDict, int, int]:
        """(tensors, the round they bring the client up to, the round the server assumes it holds)."""
        have = self.applied.get(int(client), 0)
        return self.payload.send(self.kept, have), self.payload_round, have

    def verdict(self, client: int, have: int, upto: int) -> tuple[int, Optional[bool], str]:
        """For the last round in (have, upto] that `client` trained in -- the trained state it may
        still hold -- (that round, whether its update was aggregated, the reason when not); (0, None,
        "") when it trained in none of them."""
        record = next((h for h in reversed(self.history)
                       if have < h.get("round", 0) <= upto and int(client) in h.get("participants", [])), None)
        if record is None:
            return 0, None, ""
        if int(client) in record.get("accepted", []):
            return int(record["round"]), True, ""
        reasons = [r["reason"] for r in record.get("rejected", []) if r.get("client") == int(client)]
        return int(record["round"]), False, "; ".join(reasons) or (record.get("failed") or "not aggregated")

    def holds(self, client: int, applied_round: int) -> None:
        """What the client said it holds; a smaller number than before means it lost its state."""
        client, applied_round = int(client), int(applied_round)
        before = self.applied.get(client, 0)
        if applied_round < before:
            log.warning("client %d holds round %d but had taken in round %d: its state was lost or replaced; "
                        "it will be brought back from the server's copy", client, applied_round, before)
        self.applied[client] = applied_round

    def complete_round(self, server_round: int, broadcast: Mapping[str, torch.Tensor]) -> None:
        broadcast = {k: v.detach().to("cpu") for k, v in broadcast.items()}
        self.kept = self.payload.keep(self.kept, server_round, broadcast)

    # ---- checkpoint --------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        tensors = {f"kept::{r}::{k}": v for r, kept in self.kept.items() for k, v in kept.items()}
        meta = {"round": self.round, "evaluated": self.evaluated, "fingerprint": self.cfg.fingerprint(),
                "method": self.cfg.method, "mode": self.payload.name,
                "applied": {str(k): v for k, v in self.applied.items()}, "history": self.history,
                "dp_clip_norm": self.dp_clip_norm}
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
        state = cls(cfg, round=int(meta["round"]), evaluated=int(meta.get("evaluated", meta["round"])),
                    applied={int(k): int(v) for k, v in meta.get("applied", {}).items()},
                    history=list(meta.get("history", [])))
        state.dp_clip_norm = meta.get("dp_clip_norm")
        for key, value in tensors.items():
            kind, _, rest = key.partition("::")
            if kind == "latest":          # checkpoints written before `kept`
                kind, rest = "kept", f"{int(meta['payload_round'])}::{rest}"
            if kind not in ("kept", "stack"):
                raise ClientStateError(f"{path}: unexpected tensor {key!r}")
            r, k = split_stack_key(rest)
            state.kept.setdefault(r, {})[k] = value
        return state


def numel(tensors: Mapping[str, Any]) -> int:
    return sum(int(math.prod(t.shape)) for t in tensors.values())


def close_round(state: ServerState, server_round: int, participants: Sequence[int],
                updates: Sequence[ClientUpdate], failures: Sequence[Rejection],
                train: Mapping[int, Mapping[str, float]], expected: Optional[Mapping[str, Shape]] = None,
                logger: Optional[logging.Logger] = None,
                partition_sizes: Optional[Mapping[int, int]] = None) -> dict[str, Any]:
    """Validate and aggregate one round's updates into `state`; the round's record for the history.
    Too few valid updates leave the state as it was and mark the round failed (with every reason).
    `partition_sizes`: the most examples each client can have; a larger claimed count is refused
    (it would buy that client weight in the average)."""
    logger = logger or log
    failures, kept_updates = list(failures), []
    for u in updates:
        cap = (partition_sizes or {}).get(int(u.client_id))
        if cap is not None and isinstance(u.num_examples, int) and u.num_examples > cap:
            failures.append(Rejection(u.client_id, f"claims {u.num_examples} examples; its partition holds {cap}"))
        else:
            kept_updates.append(u)
    updates = kept_updates
    record: dict[str, Any] = {
        "round": int(server_round), "participants": [int(c) for c in participants], "accepted": [],
        "rejected": [{"client": int(r.client_id), "reason": r.reason} for r in failures], "failed": None,
        "comm": None, "train": {str(c): dict(m) for c, m in train.items()}, "eval": {},
    }
    for r in failures:
        logger.warning("round %d: client %s: %s", server_round, r.client_id, r.reason)
    try:
        result = server_round_(state.method, updates, min_clients=state.cfg.min_clients, expected=expected,
                               logger=logger, combine=state.combine)
    except NotEnoughClientsError as exc:
        record["rejected"] += [{"client": int(r.client_id), "reason": r.reason} for r in exc.rejected]
        record["failed"] = (f"{len(updates) - len(exc.rejected)} valid update(s) of {len(participants)} "
                            f"sampled client(s), min_clients is {state.cfg.min_clients}")
        logger.error("round %d not aggregated: %s", server_round, record["failed"])
        return record
    except AggregationError as exc:
        record["failed"] = str(exc)
        logger.error("round %d not aggregated: %s", server_round, record["failed"])
        return record
    state.complete_round(server_round, result.broadcast)
    record["accepted"] = sorted(int(c) for c in result.accepted)
    record["rejected"] += [{"client": int(r.client_id), "reason": r.reason} for r in result.rejected]
    record["comm"] = result.comm.to_dict()
    return record


__all__ = ["ServerState", "partition_sizes", "sample_clients", "stack_key", "split_stack_key", "upload_pattern", "numel",
           "close_round", "CHECKPOINT"]
