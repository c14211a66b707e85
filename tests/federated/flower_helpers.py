"""The in-process Grid with every message in both directions kept for inspection; a node can be told
to stay silent (a timeout) or be replaced (a restart)."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from flwr.app import Context, Message, RecordDict

from asymlora.federated.flower.inprocess import InProcessGrid


class LoopbackGrid(InProcessGrid):
    def __init__(self, app: Any, run_config: dict, n_nodes: int, first_node_id: int = 1000) -> None:
        super().__init__(app, [], run_config=run_config)
        self.run_config = dict(run_config)
        for i in range(n_nodes):
            self.add_node(first_node_id + i, i)
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.silent: set[tuple[int, str, int]] = set()  # (partition, message type, server round)

    def add_node(self, node_id: int, partition: int) -> None:
        self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config={"partition-id": partition},
                                         state=RecordDict(), run_config=self.run_config)

    def remove_node(self, node_id: int) -> None:
        del self.contexts[node_id]

    def _deliver(self, msg: Message) -> Optional[Message]:
        self.sent.append(msg)
        reply = super()._deliver(msg)
        ctx = self.contexts[msg.metadata.dst_node_id]
        rnd = int(msg.content["config"].get("server-round", -1)) if "config" in msg.content.config_records else -1
        if reply is None or (int(ctx.node_config["partition-id"]), msg.metadata.message_type, rnd) in self.silent:
            return None
        self.received.append(reply)
        return reply

    def array_keys(self, messages: Iterable[Message]) -> set[str]:
        keys: set[str] = set()
        for m in messages:
            if not m.has_error():
                for rec in m.content.array_records.values():
                    keys |= set(rec.keys())
        return keys
