"""One Flower strategy per method. They differ in what crosses the wire and how the server combines
it; the arithmetic itself is the method object of `federated.algorithms`, shared with the
in-process engine. Per adapted layer (d_in x d_out), client rank r_i, d_m the decomposition width.
"""

from __future__ import annotations

from ..config import FederatedConfig
from .strategy import FederatedStrategy


class FedITStrategy(FederatedStrategy):
    """FedIT: clients send A and B ((d_in + d_out) r); the server averages both, weighted by local
    examples, and sends the averages back; every client replaces its own."""

    method = "fedit"


class FedDPAStrategy(FederatedStrategy):
    """FedDPA: two LoRAs per client; only the global one's A and B are sent and averaged as in FedIT.
    The personal LoRA never leaves the node."""

    method = "feddpa"


class FedSALoRAStrategy(FederatedStrategy):
    """FedSA-LoRA: clients send A only (d_in r) and keep B. With different ranks (FedSA-LoRA*):
    clients send A1, A2 ((d_in + d_m) r_i); the server averages the products A1 A2 (d_m x d_in) and
    sends the running total A0, which each client takes as its own A0."""

    method = "fedsa"
    payload_modes = {False: "replace", True: "total"}


class FedALoRAStrategy(FederatedStrategy):
    """Fed-ALoRA: clients send B only (d_out r) and keep A, which the server never sees. With
    different ranks: clients send B1, B2 ((d_out + d_m) r_i), never A or M; the server averages the
    products B2 B1 (d_out x d_m) and sends the running total B0 (d_out d_m)."""

    method = "fedalora"
    payload_modes = {False: "replace", True: "total"}


class ZeroPaddingStrategy(FederatedStrategy):
    """ZeroPadding: clients send A_i, B_i of their own rank; the server zero-pads them to the largest
    rank of the round, averages, and sends rank r_max back; each client keeps its first r_i."""

    method = "zeropadding"


class FLoRAStrategy(FederatedStrategy):
    """FLoRA: clients send A_i, B_i; the server stacks them (p_i A_i rows, B_i columns, whose product
    is sum_i p_i B_i A_i) and sends each client every stack it has not merged yet; clients merge the
    stacks into their frozen weights and start a fresh LoRA each round."""

    method = "flora"
    payload_modes = {False: "stack", True: "stack"}


STRATEGIES: dict[str, type[FederatedStrategy]] = {
    cls.method: cls for cls in (FedITStrategy, FedDPAStrategy, FedSALoRAStrategy, FedALoRAStrategy,
                                ZeroPaddingStrategy, FLoRAStrategy)
}


def make_strategy(cfg: FederatedConfig, **kwargs) -> FederatedStrategy:
    return STRATEGIES[cfg.method](cfg, **kwargs)
