"""The base of our Flower strategies: Flower's message-based `Strategy`, with the server side of a
round delegated to the engine-free session (`ServerState`, `close_round`) the in-process engine
uses too.

Beyond a plain FedAvg loop it knows which SuperNode plays which client (a `query` message asks
each node for its partition id and rank), samples clients by partition id with a seed, builds one
payload per node (a client that missed rounds catches up), treats an error reply or a missing one
as a failed client, rejects malformed updates with a logged reason, and checkpoints after every
round so that a restarted ServerApp resumes where the last one stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Iterable, Optional

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from ..config import FederatedConfig
from ..results import model_config_dict, write_results
from ..session import CHECKPOINT, ServerState, close_round, payload_mode, sample_clients, upload_pattern
from ..validation import ClientUpdate, Rejection
from .records import (
    APPLIED_ROUND, ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID, PAYLOAD_MODE, PAYLOAD_ROUND, RANK, SCORE,
    SERVER_ROUND, TASK_SCORE, WRITE_PREDICTIONS, WireError, from_record, record_numel, to_record,
)

log = logging.getLogger("asymlora.federated")


class FederatedStrategy(Strategy):
    """One method's strategy. Subclasses name the method and say, in their docstring, what crosses
    the wire; `payload_mode` must agree with the session's (see `session.payload_mode`)."""

    method: ClassVar[str]
    payload_modes: ClassVar[dict[bool, str]] = {False: "replace", True: "replace"}  # keyed by decomposition

    def __init__(self, cfg: FederatedConfig, *, out_dir: Optional[Path] = None) -> None:
        if cfg.method != self.method:
            raise ValueError(f"{type(self).__name__} runs {self.method}, the config asks for {cfg.method}")
        mode = self.payload_modes[cfg.uses_decomposition]
        if mode != payload_mode(cfg):
            raise AssertionError(f"{type(self).__name__}: payload mode {mode} disagrees with the session's")
        self.cfg = cfg
        self.out = Path(out_dir or cfg.output_dir)
        self.server_dir = self.out / "server"
        self.state = ServerState.load(self.server_dir, cfg) or ServerState(cfg)
        self.expected = upload_pattern(cfg)
        self.nodes: dict[int, int] = {}      # node id -> partition id
        self.ranks: dict[int, int] = {}      # partition id -> rank the node reported
        self._sent: dict[int, int] = {}      # node id -> partition id, this round's train messages
        self._record: Optional[dict[str, Any]] = None
        self._model_config: Optional[dict[str, Any]] = None

    # ---- what is sent ------------------------------------------------------------------------
    def payload(self, partition: int) -> tuple[ArrayRecord, int]:
        tensors, payload_round = self.state.payload_for(partition)
        return to_record(tensors), payload_round

    def _message(self, node: int, kind: str, server_round: int, extra: Optional[dict[str, Any]] = None) -> Message:
        if node in self.nodes:
            arrays, payload_round = self.payload(self.nodes[node])
        elif self.state.payload_round == 0:
            arrays, payload_round = ArrayRecord(), 0  # nothing aggregated yet: the same for everyone
        else:
            raise KeyError(f"node {node} has not said which client it plays")
        config = ConfigRecord({SERVER_ROUND: server_round, PAYLOAD_ROUND: payload_round,
                               PAYLOAD_MODE: self.state.mode, **(extra or {})})
        return Message(RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=node, message_type=kind)

    # ---- who is who --------------------------------------------------------------------------
    def wait_for_nodes(self, grid: Grid, count: int) -> None:
        deadline = time.monotonic() + self.cfg.connect_timeout
        while len(list(grid.get_node_ids())) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(list(grid.get_node_ids()))} of {count} SuperNodes connected "
                                   f"within connect_timeout={self.cfg.connect_timeout:g}s")
            time.sleep(0.5)

    def learn(self, node: int, partition: Any, rank: Any = None) -> Optional[int]:
        """Record that `node` plays client `partition`; None for a claim outside the run."""
        try:
            pid = int(partition)
        except (TypeError, ValueError):
            pid = -1
        if not 0 <= pid < self.cfg.n_clients:
            log.error("node %d claims partition %r; the run has clients 0..%d: ignored", node, partition,
                      self.cfg.n_clients - 1)
            return None
        for other, p in list(self.nodes.items()):
            if p == pid and other != node:
                log.warning("client %d moved from node %d to node %d (a restarted SuperNode)", pid, other, node)
                del self.nodes[other]
        self.nodes[node] = pid
        if rank is not None:
            self.ranks[pid] = int(rank)
        return pid

    def register(self, grid: Grid) -> None:
        """Ask every node not yet known which client it plays (nodes may join or restart). Needed
        before a round that samples clients or sends someone a payload; the first round of a run
        in which everyone trains skips it (each ClientApp call is a fresh process, so every message
        saved counts)."""
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
            pid = self.learn(node, m[PARTITION_ID], m[RANK])
            if pid is not None:
                self.state.mark_applied(pid, int(m[APPLIED_ROUND]))
                log.info("node %d plays client %d (rank %d, %d examples, at round %d)", node, pid, int(m[RANK]),
                         int(m[NUM_EXAMPLES]), int(m[APPLIED_ROUND]))

    def _label(self, node: int) -> int:
        """The client a node plays, or -(node + 1) while it is unknown (resolved after evaluation)."""
        pid = self.nodes.get(node, self._sent.get(node, -1))
        return pid if pid >= 0 else -(node + 1)

    def _resolve_labels(self, record: dict[str, Any]) -> None:
        """Unknown nodes that failed in the first round said who they are when they evaluated."""
        for r in record.get("rejected", []):
            if r["client"] < 0 and r.get("node") in self.nodes:
                r["client"] = self.nodes[r.pop("node")]
        record["participants"] = sorted(self.nodes.get(-p - 1, p) if p < 0 else p
                                        for p in record.get("participants", []))

    def _node_of(self, partition: int) -> int:
        return next(n for n, p in self.nodes.items() if p == partition)

    # ---- Flower's Strategy API ---------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.cfg.fraction >= 1.0 and self.state.payload_round == 0 and not self.nodes:
            self._sent = {n: -1 for n in grid.get_node_ids()}
        else:
            self.register(grid)
            partitions = sample_clients(sorted(set(self.nodes.values())), self.cfg.fraction,
                                        self.cfg.min_clients, self.cfg.seed, server_round)
            self._sent = {self._node_of(p): p for p in partitions}
        log.info("round %d: training clients %s", server_round,
                 sorted(self._sent.values()) if -1 not in self._sent.values() else "on every node")
        return [self._message(n, MessageType.TRAIN, server_round) for n in self._sent]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        updates: list[ClientUpdate] = []
        failures: list[Rejection] = []
        train: dict[int, dict[str, float]] = {}
        wire_up: list[int] = []
        answered = set()
        for reply in list(replies):
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                failures.append(Rejection(str(self._label(node)), f"crashed: {reply.error.reason}"))
                continue
            try:
                m = reply.content[METRICS]
                pid = self.learn(node, m[PARTITION_ID])
                if pid is None:
                    raise ValueError(f"partition id {m[PARTITION_ID]!r} outside the run")
                self._sent[node] = pid
                tensors = from_record(reply.content[ARRAYS])
                n = m[NUM_EXAMPLES]
                self.state.mark_applied(pid, int(m[APPLIED_ROUND]))
            except (KeyError, WireError, TypeError, ValueError) as exc:
                failures.append(Rejection(str(self._label(node)), f"malformed reply: {exc}"))
                continue
            wire_up.append(record_numel(reply.content[ARRAYS]))
            train[pid] = {k: float(v) for k, v in m.items() if k not in (PARTITION_ID, APPLIED_ROUND)}
            updates.append(ClientUpdate(str(pid), tensors, n if isinstance(n, int) else -1))
        timeout = self.cfg.client_timeout or self.cfg.round_timeout
        for node in self._sent:
            if node not in answered:
                failures.append(Rejection(str(self._label(node)), f"timed out: no reply within {timeout:g}s"))
        participants = sorted(self._label(n) for n in self._sent)
        record = close_round(self.state, server_round, participants, updates, failures, train, self.expected, log)
        for r in record["rejected"]:
            if r["client"] < 0:
                r["node"] = -r["client"] - 1
        if record["comm"] is not None:
            sent = to_record(self.state.round_broadcast())
            record["comm"]["wire_upload_params"] = sum(wire_up) / len(wire_up) if wire_up else 0
            record["comm"]["wire_download_params"] = record_numel(sent)
            record["comm"]["wire_download_bytes"] = sent.count_bytes()
        self._record = record
        if record["failed"]:
            return None, None
        return to_record(self.state.round_broadcast()), MetricRecord(
            {"upload-params": float(record["comm"]["upload_params"]),
             "download-params": float(record["comm"]["download_params"]),
             "accepted": len(record["accepted"]), "rejected": len(record["rejected"])})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        extra = {WRITE_PREDICTIONS: server_round == self.cfg.rounds}
        self.register(grid)
        return [self._message(n, MessageType.EVALUATE, server_round, extra) for n in self.nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Optional[MetricRecord]:
        evals: dict[str, Any] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("round %d: client %d failed to evaluate: %s", server_round, self._label(node),
                            reply.error.reason)
                continue
            m = reply.content[METRICS]
            pid = self.learn(node, m[PARTITION_ID])
            if pid is None:
                continue
            self.state.mark_applied(pid, int(m[APPLIED_ROUND]))
            per_task = {k[len(TASK_SCORE):]: float(v) for k, v in m.items() if k.startswith(TASK_SCORE)}
            evals[str(pid)] = {"score": float(m[SCORE]), "per_task": per_task, "num_examples": int(m[NUM_EXAMPLES]),
                               **{k: float(v) for k, v in m.items() if k.startswith("feddpa_")}}
        if self._record is not None:
            self._record["eval"] = dict(sorted(evals.items(), key=lambda kv: int(kv[0])))
        if not evals:
            return None
        return MetricRecord({SCORE: sum(e["score"] for e in evals.values()) / len(evals), "clients": len(evals)})

    def summary(self) -> None:
        log.info("%s: %s, %d clients, ranks %s, payload %s, fraction %.2f, min_clients %d", type(self).__name__,
                 self.cfg.method, self.cfg.n_clients, self.cfg.client_ranks, self.state.mode, self.cfg.fraction,
                 self.cfg.min_clients)

    # ---- the loop ----------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: Optional[ArrayRecord] = None, num_rounds: Optional[int] = None,
              timeout: Optional[float] = None, train_config: Optional[ConfigRecord] = None,
              evaluate_config: Optional[ConfigRecord] = None, evaluate_fn: Any = None) -> Result:
        """Flower's round loop, resumable: rounds already in the checkpoint are skipped."""
        from tqdm.auto import tqdm

        num_rounds = num_rounds or self.cfg.rounds
        timeout = timeout or self.cfg.client_timeout or self.cfg.round_timeout
        self.summary()
        if self.state.round:
            log.info("resuming from %s: round %d of %d done", self.server_dir / CHECKPOINT, self.state.round,
                     num_rounds)
        self.wait_for_nodes(grid, self.cfg.n_clients)
        result = Result()
        bar = tqdm(range(self.state.round + 1, num_rounds + 1), desc=f"{self.cfg.method} rounds",
                   initial=self.state.round, total=num_rounds, disable=not self.cfg.progress)
        for t in bar:
            start = time.perf_counter()
            self._record = None
            replies = grid.send_and_receive(self.configure_train(t, ArrayRecord(), ConfigRecord(), grid),
                                            timeout=timeout)
            arrays, metrics = self.aggregate_train(t, replies)
            if arrays is not None:
                result.arrays = arrays
            if metrics is not None:
                result.train_metrics_clientapp[t] = metrics
            if t % self.cfg.eval_every == 0 or t == num_rounds:
                replies = grid.send_and_receive(self.configure_evaluate(t, ArrayRecord(), ConfigRecord(), grid),
                                                timeout=timeout)
                ev = self.aggregate_evaluate(t, replies)
                if ev is not None:
                    result.evaluate_metrics_clientapp[t] = ev
                    bar.set_postfix(avg=f"{float(ev[SCORE]):.2f}")
            record = self._record or {"round": t}
            if any(p < 0 for p in record.get("participants", [])):
                self.register(grid)   # nodes that failed before saying who they are
            self._resolve_labels(record)
            record["seconds"] = time.perf_counter() - start
            self.state.round = t
            self.state.history.append(record)
            self.state.save(self.server_dir)
            self.write_results()
            log.info("round %d done: accepted %s, rejected %s%s", t, record.get("accepted"),
                     [r["client"] for r in record.get("rejected", [])],
                     f", FAILED: {record['failed']}" if record.get("failed") else "")
        bar.close()
        self.write_results()
        return result

    def write_results(self) -> dict[str, Any]:
        if self._model_config is None:
            self._model_config = model_config_dict(self.cfg)
        return write_results(self.cfg, self.state.history, self.out, self._model_config)
