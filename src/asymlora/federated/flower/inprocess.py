"""A Flower Grid that delivers each message to a ClientApp in this process: the in-process engine
(one GPU or a laptop, no Ray, no SuperLink) runs the very round loop and ClientApp, mods included,
that the simulation and a deployment run. Clients answer one after another; a client that raises
answers with an error, as a crashed SuperNode would; one that answers later than `client_timeout`
is treated as having sent nothing."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Iterable, Mapping, Optional, Sequence
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger("asymlora.federated")

CLIENT_EXCEPTION = 3
"""Error code of a reply whose ClientApp raised (Flower's own code for a ClientApp exception)."""


class InProcessGrid(Grid):
    """Nodes 1..n, node i playing the ClientApp with `node_configs[i - 1]`."""

    def __init__(self, app: ClientApp, node_configs: Sequence[Mapping[str, Any]],
                 run_config: Optional[Mapping[str, Any]] = None, client_timeout: Optional[float] = None) -> None:
        self.app = app
        self.client_timeout = client_timeout
        self.contexts = {i + 1: Context(run_id=0, node_id=i + 1, node_config=dict(c), state=RecordDict(),
                                        run_config=dict(run_config or {}))
                         for i, c in enumerate(node_configs)}
        self._replies: dict[str, Message] = {}
        self._run: Any = None
        try:
            TaskIdentity.run_id
        except RuntimeError:  # messages are stamped with the run; Flower's own launchers set it
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: Optional[float] = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self) -> Iterable[Any]:
        """Node infos; a node config's `public-key` (bytes or text) stands for the key a SuperLink
        with SuperNode authentication would know."""
        from flwr.proto.node_pb2 import NodeInfo  # noqa: PLC0415

        out = []
        for node, ctx in self.contexts.items():
            key = ctx.node_config.get("public-key", b"")
            out.append(NodeInfo(node_id=node, public_key=key.encode() if isinstance(key, str) else key))
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            ids.append(msg.metadata.message_id)
            reply = self._deliver(msg)
            if reply is not None:
                self._replies[msg.metadata.message_id] = reply
        return ids

    def _deliver(self, msg: Message) -> Optional[Message]:
        node = msg.metadata.dst_node_id
        if node not in self.contexts:
            return Message(Error(CLIENT_EXCEPTION, f"no node {node}"), reply_to=msg)
        start = time.perf_counter()
        try:  # a copy, as a real transport would deliver: a client must not change the server's objects
            reply = self.app(copy.deepcopy(msg), self.contexts[node])
        except Exception as exc:  # a crashed client costs the round its update, nothing more
            log.exception("node %d failed on a %s message", node, msg.metadata.message_type)
            reply = Message(Error(CLIENT_EXCEPTION, f"{type(exc).__name__}: {exc}"), reply_to=msg)
        took = time.perf_counter() - start
        if self.client_timeout is not None and took > self.client_timeout:
            log.warning("node %d replied after %.1fs, client_timeout is %gs: reply dropped", node, took,
                        self.client_timeout)
            return None
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: Optional[float] = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
