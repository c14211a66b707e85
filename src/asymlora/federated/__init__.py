"""Federated fine-tuning: each method as plain torch on adapter state dicts (`algorithms`),
server-side checks of incoming updates (`validation`), one engine-free server round (`server`)
and communication accounting (`comm`). Only `flower/` imports flwr."""

from .algorithms import METHOD_NAMES, FederatedMethod, build_method
from .comm import comm_cost, measure_comm
from .server import RoundResult, server_round
from .validation import ClientUpdate, NotEnoughClientsError, Rejection, validate_updates

__all__ = [
    "METHOD_NAMES", "FederatedMethod", "build_method", "comm_cost", "measure_comm", "RoundResult",
    "server_round", "ClientUpdate", "NotEnoughClientsError", "Rejection", "validate_updates",
]
