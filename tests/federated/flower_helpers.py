"""A Flower Grid that hands each message straight to a ClientApp in this process: the strategies
and apps run unchanged, without Ray or SuperNodes, and every message in both directions is kept
for inspection. A node can be told to stay silent (a timeout) or be replaced (a restart)."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LoopbackGrid(Grid):
    def __init__(self, app: Any, run_config: dict, n_nodes: int, first_node_id: int = 1000) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app = app
        self.run_config = dict(run_config)
        self.contexts: dict[int, Context] = {}
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

    # ---- Grid ------------------------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: Optional[float] = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("LoopbackGrid answers in send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("LoopbackGrid answers in send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: Optional[float] = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            ctx = self.contexts[node]
            self.sent.append(msg)
            try:
                reply = self.app(msg, ctx)
            except Exception as exc:  # what a SuperNode reports for a ClientApp that raised
                reply = Message(Error(0, f"{type(exc).__name__}: {exc}"), reply_to=msg)
            rnd = int(msg.content["config"].get("server-round", -1)) if "config" in msg.content.config_records else -1
            if (int(ctx.node_config["partition-id"]), msg.metadata.message_type, rnd) in self.silent:
                continue
            self.received.append(reply)
            replies.append(reply)
        return replies

    def array_keys(self, messages: Iterable[Message]) -> set[str]:
        keys: set[str] = set()
        for m in messages:
            if not m.has_error():
                for rec in m.content.array_records.values():
                    keys |= set(rec.keys())
        return keys
