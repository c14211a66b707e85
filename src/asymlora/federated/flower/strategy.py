"""The round loop, written once: a Flower `Strategy` whose `start` drives every engine -- Flower's
simulation, a deployment, and the in-process engine (`inprocess.InProcessGrid`).

A round: sample clients (seeded by round), send each its train message with the payload it lacks,
collect the replies, validate and aggregate them (`session.close_round`), checkpoint, then send the
round's broadcast with the evaluate messages and record the scores. What a method sends and keeps is
the method's (`algorithms`); the loop knows none of them by name.

The protocol around it, for a server and clients that can die at any moment:
- the checkpoint is written once the round is aggregated, before anything of it leaves the server,
  and again once it is evaluated: a resumed server never re-aggregates a round a client has taken in;
- each message says which round the payload brings the client to and which round the server
  believes it holds; a client holding less (its state directory was lost) answers "stale" with what
  it holds, and is sent the payload again at once, from there;
- each payload tells the client whether its update of that round was aggregated; a rejected client
  goes on from its last accepted state;
- every payload crosses the wire once per client: the server keeps what each client said it holds;
  the traffic is counted from the messages themselves (`Traffic`);
- a node claiming a partition another live node plays, or a rank other than the configured one, is
  refused; a count of examples above the partition's size is refused.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from ..client import mix_seed
from ..config import FederatedConfig
from ..results import model_config_dict, write_results
from ..session import CHECKPOINT, ServerState, close_round, partition_sizes, sample_clients, upload_pattern
from ..validation import ClientUpdate, Rejection
from .records import (
    ACCEPTED, APPLIED_ROUND, ARRAYS, BASE_ROUND, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID, PAYLOAD_ROUND, RANK,
    REASON, SCORE, SERVER_ROUND, STALE, TASK_SCORE, TRAINED_ROUND, WRITE_PREDICTIONS, WireError, from_record,
    payload_rounds, record_bytes, record_numel, to_record,
)

log = logging.getLogger("asymlora.federated")

PHASES = ("sample", "train", "aggregate", "checkpoint", "evaluate")
"""Points of a round at which `on_phase` is called (tests stop the server there)."""


class RoundFailedError(RuntimeError):
    """A round had fewer valid updates than `min_clients`: the run stops (it resumes from there)."""


class Traffic:
    """Parameters and bytes in the messages actually sent and received, per round and client."""

    @staticmethod
    def add(record: dict[str, Any], direction: str, client: int, params: int, nbytes: int) -> None:
        wire = record.setdefault("wire", {"upload": {}, "download": {}})
        params0, bytes0 = wire[direction].get(str(client), (0, 0))
        wire[direction][str(client)] = (params0 + int(params), bytes0 + int(nbytes))


class CountingGrid:
    """A Grid seen through a meter: bytes of every array and bytes-valued config entry sent to and
    received from each node (SecAgg+'s stages carry keys and shares as bytes)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}

    @staticmethod
    def size(msg: Message) -> int:
        if msg.has_error():
            return 0
        n = sum(record_bytes(r) for r in msg.content.array_records.values())
        for rec in msg.content.config_records.values():
            for v in rec.values():
                items = v if isinstance(v, list) else [v]
                n += sum(len(x) for x in items if isinstance(x, (bytes, str)))
        return n

    def send_and_receive(self, messages: Iterable[Message], *, timeout: Optional[float] = None) -> Iterable[Message]:
        messages = list(messages)
        for m in messages:
            key = str(m.metadata.dst_node_id)
            self.sent[key] = self.sent.get(key, 0) + self.size(m)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for r in replies:
            key = str(r.metadata.src_node_id)
            self.received[key] = self.received.get(key, 0) + self.size(r)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


class FederatedStrategy(Strategy):
    """The run of `cfg`. `on_phase(phase, round)` is called at each point of `PHASES`."""

    def __init__(self, cfg: FederatedConfig, *, out_dir: Optional[Path] = None,
                 on_phase: Optional[Callable[[str, int], None]] = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir or cfg.output_dir)
        self.server_dir = self.out / "server"
        self.state = ServerState.load(self.server_dir, cfg) or ServerState(cfg)
        if cfg.aggregation != "fedavg":
            from .robust import make_combine

            self.state.combine = make_combine(cfg.aggregation_rule)
        self.dp = cfg.dp_settings
        if self.dp is not None:
            from .dp import DPCombine

            self.state.combine = DPCombine(self.dp, clip_norm=self.state.dp_clip_norm)
        self.expected = upload_pattern(cfg)
        self.sizes = partition_sizes(cfg)
        self.node_keys = cfg.node_key_map   # read the key files once, not at every claim
        self.on_phase = on_phase
        self.nodes: dict[int, int] = {}      # node id -> partition id
        self._sent: dict[int, int] = {}      # node id -> partition id (-1: not known yet), this round
        self._grid: Any = None
        self._model_config: Optional[dict[str, Any]] = None

    # ---- messages ----------------------------------------------------------------------------
    def _message(self, node: int, kind: str, server_round: int, extra: Optional[dict[str, Any]] = None) -> Message:
        pid = self.nodes.get(node)
        if pid is None and self.state.payload_round:
            raise KeyError(f"node {node} has not said which client it plays")
        tensors, payload_round, have = self.state.payload_for(pid) if pid is not None else ({}, 0, 0)
        trained, accepted, reason = self.state.verdict(pid, have, payload_round) if pid is not None else (0, None, "")
        config = ConfigRecord({SERVER_ROUND: server_round, PAYLOAD_ROUND: payload_round, BASE_ROUND: have,
                               TRAINED_ROUND: trained, ACCEPTED: -1 if accepted is None else int(accepted),
                               REASON: reason, **(extra or {})})
        if self.dp is not None and kind == MessageType.TRAIN:
            from .dp import CLIP_NORM, NOISE_SEED

            config[CLIP_NORM] = float(self.state.combine.clip_norm)
            config[NOISE_SEED] = mix_seed(self.cfg.seed, 5077, pid if pid is not None else -node, server_round) % 2**31
        arrays = to_record(tensors)
        if pid is not None and len(arrays):
            for r, (params, nbytes) in payload_rounds(arrays, payload_round, self.state.payload.name).items():
                Traffic.add(self._record_of(r), "download", pid, params, nbytes)
        return Message(RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=node, message_type=kind)

    def _record_of(self, server_round: int) -> dict[str, Any]:
        return next(h for h in self.state.history if h["round"] == server_round)

    def _exchange(self, grid: Grid, kind: str, server_round: int, messages: Iterable[Message]) -> list[Message]:
        """Send `messages`; a node that answers "stale" (it holds less than the server believed) is
        sent its message again at once, rebuilt from what it said it holds."""
        timeout = self.cfg.client_timeout or self.cfg.round_timeout
        messages = list(messages)
        extra = {k: v for k, v in messages[0].content[CONFIG].items() if k == WRITE_PREDICTIONS} if messages else {}
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        stale = [r for r in replies if not r.has_error() and STALE in r.content[METRICS]]
        if not stale:
            return replies
        for reply in stale:
            node, m = reply.metadata.src_node_id, reply.content[METRICS]
            self.state.holds(self.nodes.get(node, int(m[PARTITION_ID])), int(m[APPLIED_ROUND]))
        again = [self._message(r.metadata.src_node_id, kind, server_round, extra) for r in stale]
        return [r for r in replies if r not in stale] + list(grid.send_and_receive(again, timeout=timeout))

    # ---- who is who --------------------------------------------------------------------------
    def wait_for_nodes(self, grid: Grid, count: int) -> None:
        deadline = time.monotonic() + self.cfg.connect_timeout
        while len(list(grid.get_node_ids())) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(list(grid.get_node_ids()))} SuperNodes connected within "
                                   f"connect_timeout={self.cfg.connect_timeout:g}s; min_clients is {count}")
            time.sleep(0.5)

    def learn(self, grid: Grid, node: int, partition: Any, rank: Any = None) -> Optional[int]:
        """Record that `node` plays client `partition`; None (logged) for a claim refused: outside the
        run, a partition another live node plays, or a rank other than the configured one."""
        try:
            pid = int(partition)
        except (TypeError, ValueError):
            pid = -1
        if not 0 <= pid < self.cfg.n_clients:
            log.error("node %d claims partition %r; the run has clients 0..%d: refused", node, partition,
                      self.cfg.n_clients - 1)
            return None
        if self.node_keys:
            owner = self.node_keys.get(self._node_key(grid, node))
            if owner != pid:
                log.error("node %d claims partition %d but %s: refused", node, pid,
                          "presents no registered key" if owner is None else f"its key belongs to partition {owner}")
                return None
        if rank is not None and int(rank) != self.cfg.rank_of(pid):
            log.error("node %d claims partition %d with rank %s; the run gives it rank %d: refused", node, pid,
                      rank, self.cfg.rank_of(pid))
            return None
        live = set(grid.get_node_ids())
        for other, p in list(self.nodes.items()):
            if p == pid and other != node:
                if other in live:
                    log.error("node %d claims partition %d, which node %d plays: refused", node, pid, other)
                    return None
                log.warning("client %d moved from node %d to node %d (a restarted SuperNode)", pid, other, node)
                del self.nodes[other]
        self.nodes[node] = pid
        return pid

    @staticmethod
    def _node_key(grid: Grid, node: int) -> Optional[bytes]:
        """The node's public key as the SuperLink knows it (SuperNode authentication), in DER."""
        from ..identity import IdentityError, public_key_der

        raw = next((n.public_key for n in grid.get_nodes() if n.node_id == node), b"")
        try:
            return public_key_der(raw) if raw else None
        except IdentityError:
            return None

    def register(self, grid: Grid) -> None:
        """Ask every node not yet known which client it plays (nodes may join or restart)."""
        new = [n for n in grid.get_node_ids() if n not in self.nodes]
        if not new:
            return
        msgs = [Message(RecordDict({CONFIG: ConfigRecord({SERVER_ROUND: self.state.round})}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in new]
        for reply in grid.send_and_receive(msgs, timeout=min(self.cfg.round_timeout, self.cfg.connect_timeout)):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %d did not register: %s", node, reply.error.reason)
                continue
            m = reply.content[METRICS]
            pid = self.learn(grid, node, m[PARTITION_ID], m[RANK])
            if pid is not None:
                self.state.holds(pid, int(m[APPLIED_ROUND]))
                log.info("node %d plays client %d (rank %d, %d examples, at round %d)", node, pid, int(m[RANK]),
                         int(m[NUM_EXAMPLES]), int(m[APPLIED_ROUND]))

    # ---- one round ---------------------------------------------------------------------------
    def _phase(self, phase: str, server_round: int) -> None:
        if self.on_phase is not None:
            self.on_phase(phase, server_round)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample the round's clients; each gets the payload it lacks."""
        self._phase("sample", server_round)
        first = self.state.payload_round == 0 and not self.nodes and self.cfg.fraction >= 1.0 \
            and self.cfg.secagg_settings is None   # SecAgg+ must know who is who before it starts
        if first:  # nothing to send anyone yet: every node trains, and says who it is in its reply
            self._sent = {n: -1 for n in grid.get_node_ids()}
        else:
            self.register(grid)
            partitions = sample_clients(sorted(set(self.nodes.values())), self.cfg.fraction,
                                        self.cfg.min_clients, self.cfg.seed, server_round)
            self._sent = {n: p for n, p in self.nodes.items() if p in partitions}
        log.info("round %d: training clients %s", server_round,
                 "on every node" if first else sorted(self._sent.values()))
        return [self._message(n, MessageType.TRAIN, server_round) for n in self._sent]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Validate and aggregate the round's updates into the server state; the round's record
        goes into the history (with `failed` set when too few updates were valid)."""
        wire: dict[str, Any] = {}
        if self.dp is not None:   # the server's noise for this round, the same on a resumed run
            self.state.combine.seed = mix_seed(self.cfg.seed, 4099, server_round)
        updates, failures, train = self._read_train_replies(self._grid, self._sent, replies, wire)
        unknown = [n for n, p in self._sent.items() if p < 0]
        if unknown:  # nodes that failed before saying who they are
            self.register(self._grid)
            relabel = {str(-(n + 1)): str(self.nodes[n]) for n in unknown if n in self.nodes}
            failures = [Rejection(relabel.get(f.client_id, f.client_id), f.reason) for f in failures]
            self._sent.update({n: self.nodes[n] for n in unknown if n in self.nodes})
        participants = sorted(p if p >= 0 else -(n + 1) for n, p in self._sent.items())
        record = close_round(self.state, server_round, participants, updates, failures, train, self.expected, log,
                             partition_sizes=self.sizes)
        record.update(wire)
        if self.dp is not None and not record["failed"]:
            record["privacy"] = self.privacy_record(server_round)
        self.state.round = server_round
        self.state.history.append(record)
        if record["failed"]:
            return None, None
        return to_record(self.state.kept[self.state.payload_round]), MetricRecord(
            {"accepted": len(record["accepted"]), "rejected": len(record["rejected"])})

    def train_round(self, grid: Grid, t: int) -> dict[str, Any]:
        """Round `t` up to its checkpoint: sample, train, validate, aggregate, save."""
        self._grid = grid
        messages = self.configure_train(t, ArrayRecord(), ConfigRecord(), grid)
        if self.cfg.secagg_settings is not None:
            self.secure_train(grid, t, messages)
        else:
            replies = self._exchange(grid, MessageType.TRAIN, t, messages)
            self._phase("train", t)
            self.aggregate_train(t, replies)
        self._phase("aggregate", t)
        self.state.save(self.server_dir)
        self._phase("checkpoint", t)
        return self._record_of(t)

    def secure_train(self, grid: Grid, t: int, messages: Iterable[Message]) -> None:
        """Round `t` through SecAgg+ (`secagg.py`): the server gets the weighted mean, no upload."""
        from .secagg import SecAggError, secure_round

        settings = self.cfg.secagg_settings
        counted = CountingGrid(grid)
        keys = sorted(self.expected)
        failures: list[Rejection] = []
        try:
            capture = secure_round(counted, t, {m.metadata.dst_node_id: m for m in messages},
                                   max_weight=float(max(self.sizes.values(), default=settings["max_weight"])),
                                   clipping_range=settings["clipping_range"],
                                   quantization_range=settings["quantization_range"],
                                   reconstruction_threshold=settings["reconstruction_threshold"],
                                   timeout=self.cfg.client_timeout or self.cfg.round_timeout)
        except SecAggError as exc:
            capture, failures = None, [Rejection("-1", str(exc))]
        self._phase("train", t)
        updates, train = [], {}
        if capture is not None and capture.mean is not None:
            for proxy, fitres in capture.results:
                pid = self.learn(grid, proxy.node_id, fitres.metrics.get(PARTITION_ID), fitres.metrics.get(RANK))
                if pid is None:
                    failures.append(Rejection(str(-(proxy.node_id + 1)), "partition claim refused (see the log)"))
                    continue
                self._sent[proxy.node_id] = pid
                self.state.holds(pid, int(fitres.metrics.get(APPLIED_ROUND, 0)))
                train[pid] = {k: float(v) for k, v in fitres.metrics.items()
                              if k not in (PARTITION_ID, APPLIED_ROUND, RANK) and isinstance(v, (int, float))}
            # the mean stands in for every upload: the server never holds one
            mean = {k: torch.from_numpy(np.asarray(a, dtype=np.float32)) for k, a in zip(keys, capture.mean)}
            updates = [ClientUpdate(str(p), mean, 1) for p in train]
        dropped = {n for n in self._sent} - {proxy.node_id for proxy, _ in (capture.results if capture else [])}
        failures += [Rejection(str(self._sent[n] if self._sent[n] >= 0 else -(n + 1)), "dropped out of SecAgg+")
                     for n in sorted(dropped)]
        participants = sorted(p if p >= 0 else -(n + 1) for n, p in self._sent.items())
        record = close_round(self.state, t, participants, updates, failures, train, self.expected, log,
                             partition_sizes=None)
        record["secagg"] = {"bytes_sent": counted.sent, "bytes_received": counted.received,
                            "clipping_range": settings["clipping_range"],
                            "quantization_range": settings["quantization_range"]}
        numel = sum(math.prod(int(d) for d in shape) for shape in self.expected.values())
        record["wire"] = {"upload": {str(self._sent[n]): [numel, counted.received.get(str(n), 0)]
                                     for n in self._sent if self._sent[n] >= 0 and n not in dropped},
                          "download": {}}
        self.state.round = t
        self.state.history.append(record)

    def _read_train_replies(self, grid: Grid, sent: dict[int, int], replies: Iterable[Message],
                            record: dict[str, Any]) -> tuple[list[ClientUpdate], list[Rejection], dict[int, Any]]:
        updates: list[ClientUpdate] = []
        failures: list[Rejection] = []
        train: dict[int, dict[str, float]] = {}
        answered = set()
        label = lambda n: sent.get(n, -1) if sent.get(n, -1) >= 0 else -(n + 1)  # noqa: E731
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                failures.append(Rejection(str(label(node)), f"crashed: {reply.error.reason}"))
                continue
            try:
                m = reply.content[METRICS]
                claimed = int(m[PARTITION_ID])
                if sent[node] >= 0 and claimed != sent[node]:
                    raise ValueError(f"node {node} was asked to train client {sent[node]} but answered as {claimed}")
                pid = self.learn(grid, node, claimed, m[RANK] if RANK in m else None)
                if pid is None:
                    raise ValueError(f"partition claim {m[PARTITION_ID]!r} refused (see the log)")
                sent[node] = pid
                tensors = from_record(reply.content[ARRAYS])
                n = m[NUM_EXAMPLES]
                self.state.holds(pid, int(m[APPLIED_ROUND]))
            except (KeyError, WireError, TypeError, ValueError) as exc:
                failures.append(Rejection(str(label(node)), f"malformed reply: {exc}"))
                continue
            Traffic.add(record, "upload", pid, record_numel(reply.content[ARRAYS]), record_bytes(reply.content[ARRAYS]))
            train[pid] = {k: float(v) for k, v in m.items() if k not in (PARTITION_ID, APPLIED_ROUND, RANK)}
            updates.append(ClientUpdate(str(pid), tensors, n if isinstance(n, int) else -1))
        timeout = self.cfg.client_timeout or self.cfg.round_timeout
        for node in sent:
            if node not in answered:
                failures.append(Rejection(str(label(node)), f"timed out: no reply within {timeout:g}s"))
        return updates, failures, train

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Every known client gets the round's broadcast and scores its personalised model."""
        self.register(grid)
        extra = {WRITE_PREDICTIONS: server_round == self.cfg.rounds}
        return [self._message(n, MessageType.EVALUATE, server_round, extra) for n in self.nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Optional[MetricRecord]:
        evals: dict[str, Any] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("round %d: node %d failed to evaluate: %s", server_round, node, reply.error.reason)
                continue
            m = reply.content[METRICS]
            pid = self.nodes.get(node)
            if pid is None or int(m[PARTITION_ID]) != pid:
                log.error("round %d: node %d answered as client %s: evaluation ignored", server_round, node,
                          m[PARTITION_ID])
                continue
            self.state.holds(pid, int(m[APPLIED_ROUND]))
            per_task = {k[len(TASK_SCORE):]: float(v) for k, v in m.items() if k.startswith(TASK_SCORE)}
            evals[str(pid)] = {"score": float(m[SCORE]), "per_task": per_task, "num_examples": int(m[NUM_EXAMPLES]),
                               **{k: float(v) for k, v in m.items() if k.endswith(("_mean", "_min", "_max"))}}
        self._record_of(server_round)["eval"] = dict(sorted(evals.items(), key=lambda kv: int(kv[0])))
        if not evals:
            return None
        return MetricRecord({SCORE: sum(e["score"] for e in evals.values()) / len(evals), "clients": len(evals)})

    def evaluate_round(self, grid: Grid, t: int) -> Optional[MetricRecord]:
        messages = self.configure_evaluate(t, ArrayRecord(), ConfigRecord(), grid)
        metrics = self.aggregate_evaluate(t, self._exchange(grid, MessageType.EVALUATE, t, messages))
        self._phase("evaluate", t)
        return metrics

    def privacy_record(self, server_round: int) -> dict[str, Any]:
        """The budget spent so far (`dp.budget_after`) and what the round's DP step did."""
        from ..dp import budget_after

        q = self.cfg.sampled_clients / self.cfg.n_clients
        combine = self.state.combine
        self.state.dp_clip_norm = combine.clip_norm
        eps = budget_after(self.dp, server_round, q)
        log.info("round %d: epsilon %.3g at delta %g (%s DP, noise multiplier %g)", server_round, eps, self.dp.delta,
                 self.dp.mode, self.dp.noise_multiplier)
        return {"epsilon": eps, "delta": self.dp.delta, "noise_multiplier": self.dp.noise_multiplier,
                "sample_rate": 1.0 if self.dp.mode == "local" else q, "mode": self.dp.mode,
                "clipping": self.dp.clipping, **combine.last}

    # ---- the loop ----------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: Optional[ArrayRecord] = None, num_rounds: Optional[int] = None,
              timeout: Optional[float] = None, train_config: Optional[ConfigRecord] = None,
              evaluate_config: Optional[ConfigRecord] = None, evaluate_fn: Any = None) -> Result:
        """Rounds from where the checkpoint stopped to `num_rounds`; raises `RoundFailedError` when a
        round has too few valid updates (after writing the results)."""
        from tqdm.auto import tqdm

        num_rounds = num_rounds or self.cfg.rounds
        self.summary()
        if self.state.evaluated:
            log.info("resuming from %s: round %d of %d done", self.server_dir / CHECKPOINT, self.state.evaluated,
                     num_rounds)
        self.wait_for_nodes(grid, self.cfg.min_clients)
        result = Result()
        bar = tqdm(range(self.state.evaluated + 1, num_rounds + 1), desc=f"{self.cfg.method} rounds",
                   initial=self.state.evaluated, total=num_rounds, disable=not self.cfg.progress)
        for t in bar:
            start = time.perf_counter()
            record = self.train_round(grid, t) if self.state.round < t else self._record_of(t)
            if record.get("failed"):
                self.state.evaluated = t
                self.state.save(self.server_dir)
                self.write_results()
                raise RoundFailedError(f"round {t}: {record['failed']}; rejected: "
                                       + ("; ".join(f"client {r['client']}: {r['reason']}" for r in record["rejected"])
                                          or "none"))
            result.arrays = to_record(self.state.kept[self.state.payload_round])
            if t % self.cfg.eval_every == 0 or t == num_rounds:
                metrics = self.evaluate_round(grid, t)
                if metrics is not None:
                    result.evaluate_metrics_clientapp[t] = metrics
                    bar.set_postfix(avg=f"{float(metrics[SCORE]):.2f}",
                                    **({"eps": f"{record['privacy']['epsilon']:.3g}"} if record.get("privacy") else {}))
            record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - start
            self.state.evaluated = t
            self.state.save(self.server_dir)
            self.write_results()
            log.info("round %d done: accepted %s, rejected %s", t, record.get("accepted"),
                     [r["client"] for r in record.get("rejected", [])])
        bar.close()
        self.write_results()
        return result

    def summary(self) -> None:
        log.info("%s: %d clients, ranks %s, payload %s, fraction %.2f, min_clients %d", self.cfg.method,
                 self.cfg.n_clients, self.cfg.client_ranks, self.state.payload.name, self.cfg.fraction,
                 self.cfg.min_clients)

    def write_results(self) -> dict[str, Any]:
        if self._model_config is None:
            self._model_config = model_config_dict(self.cfg)
        return write_results(self.cfg, self.state.history, self.out, self._model_config)

def make_strategy(cfg: FederatedConfig, **kwargs: Any) -> FederatedStrategy:
    return FederatedStrategy(cfg, **kwargs)
