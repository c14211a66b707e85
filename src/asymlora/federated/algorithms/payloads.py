"""How a round's aggregate reaches the clients: the three ways a method's broadcast is kept by the
server and taken in by a client. A method names one (`FederatedMethod.payload`); the round loop and
the client only ever call these three objects.

- `REPLACE` (FedIT, FedDPA, FedSA-LoRA, Fed-ALoRA, ZeroPadding): the newest broadcast replaces the
  client's shared factors; a client that sat rounds out simply takes the newest one.
- `RUNNING_TOTAL` (the decomposition: Fed-ALoRA and FedSA-LoRA* with different ranks): each round's
  broadcast is an increment to the accumulator B0 (A0). The server keeps the running total and sends
  that (the same shape, so the same traffic); the client sets its accumulator to it, so a client
  that missed rounds loses nothing.
- `STACK` (FLoRA): each round's stack is merged into the clients' base weights. The server keeps
  every round's stack and sends a client those it has not merged yet (keys `<round>::<key>`).

`kept` is the server's memory, round -> tensors; `have` the last round a client has taken in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Mapping

import torch

from ..keys import StateDict

if TYPE_CHECKING:
    from .base import FederatedMethod

Deltas = dict[str, torch.Tensor]
"""module -> d_out x d_in update merged into a client's frozen base weight (FLoRA's stacks)."""


def stack_key(server_round: int, key: str) -> str:
    return f"{int(server_round)}::{key}"


def split_stack_key(key: str) -> tuple[int, str]:
    head, sep, rest = key.partition("::")
    if not sep or not head.isdigit():
        raise KeyError(f"{key!r} is not a stacked-payload key (expected '<round>::<adapter key>')")
    return int(head), rest


class Payload:
    """Replace: the server keeps the newest broadcast, a client overwrites its copy with it."""

    name: ClassVar[str] = "replace"

    def keep(self, kept: Mapping[int, StateDict], server_round: int, broadcast: StateDict) -> dict[int, StateDict]:
        """The server's memory after round `server_round` aggregated to `broadcast`."""
        return {int(server_round): dict(broadcast)}

    def send(self, kept: Mapping[int, StateDict], have: int) -> StateDict:
        """What a client that has taken in round `have` is sent ({} when it is up to date)."""
        if not kept or max(kept) <= have:
            return {}
        return dict(kept[max(kept)])

    def take(self, method: "FederatedMethod", state: StateDict, deltas: Deltas, payload: Mapping[str, torch.Tensor],
             have: int) -> tuple[StateDict, Deltas]:
        """The client's (adapter state, base deltas) after taking in `payload`."""
        return (method.client_apply(state, payload) if payload else dict(state)), dict(deltas)


class RunningTotal(Payload):
    name = "total"

    def keep(self, kept: Mapping[int, StateDict], server_round: int, broadcast: StateDict) -> dict[int, StateDict]:
        total = dict(kept[max(kept)]) if kept else {}
        for key, value in broadcast.items():
            total[key] = total[key] + value if key in total else value.clone()
        return {int(server_round): total}

    def take(self, method: "FederatedMethod", state: StateDict, deltas: Deltas, payload: Mapping[str, torch.Tensor],
             have: int) -> tuple[StateDict, Deltas]:
        increment = {}
        for key, total in payload.items():
            if key not in state:
                raise KeyError(f"{method.name}: the payload carries {key!r}, which the client state lacks")
            increment[key] = total.to(state[key].dtype) - state[key]
        return super().take(method, state, deltas, increment, have)


class Stack(Payload):
    name = "stack"

    def keep(self, kept: Mapping[int, StateDict], server_round: int, broadcast: StateDict) -> dict[int, StateDict]:
        return {**kept, int(server_round): dict(broadcast)}

    def send(self, kept: Mapping[int, StateDict], have: int) -> StateDict:
        return {stack_key(r, k): v for r in sorted(kept) if r > have for k, v in kept[r].items()}

    def take(self, method: "FederatedMethod", state: StateDict, deltas: Deltas, payload: Mapping[str, torch.Tensor],
             have: int) -> tuple[StateDict, Deltas]:
        by_round: dict[int, StateDict] = {}
        for key, value in payload.items():
            r, k = split_stack_key(key)
            by_round.setdefault(r, {})[k] = value
        state, deltas = dict(state), dict(deltas)
        for r in sorted(by_round):
            if r <= have:
                continue  # merged already; merging twice would count that round twice
            for module, d in method.base_weight_deltas(by_round[r]).items():
                d = d.detach().to("cpu", torch.float32)
                deltas[module] = deltas[module] + d if module in deltas else d
            state = method.client_apply(state, by_round[r])
        return state, deltas


REPLACE, RUNNING_TOTAL, STACK = Payload(), RunningTotal(), Stack()
PAYLOADS: dict[str, Payload] = {p.name: p for p in (REPLACE, RUNNING_TOTAL, STACK)}


class FromStart(Payload):
    """Under DP (`federated/dp.py`) the server keeps the running total of the noised mean updates
    (`RUNNING_TOTAL.keep`); a client's shared factors are its initial ones, `start`, plus that total."""

    name = "from-start"

    def __init__(self, start: Mapping[str, torch.Tensor]) -> None:
        self.start = dict(start)

    def take(self, method: "FederatedMethod", state: StateDict, deltas: Deltas, payload: Mapping[str, torch.Tensor],
             have: int) -> tuple[StateDict, Deltas]:
        missing = sorted(set(payload) - set(self.start))
        if missing:
            raise KeyError(f"{method.name}: the payload carries {missing[:3]}, which the client's initial state lacks")
        return super().take(method, state, deltas, {k: self.start[k] + v for k, v in payload.items()}, have)
