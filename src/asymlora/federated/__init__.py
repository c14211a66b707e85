"""Federated fine-tuning: each method as plain torch on adapter state dicts (`algorithms`),
server-side checks of incoming updates (`validation`), one engine-free server round (`server`)
and communication accounting (`comm`). Only `flower/` imports flwr."""

from importlib import import_module
from typing import Any

_HOMES = {"METHOD_NAMES": "algorithms", "FederatedMethod": "algorithms", "build_method": "algorithms",
          "comm_cost": "comm", "measure_comm": "comm", "RoundResult": "server", "server_round": "server",
          "ClientUpdate": "validation", "NotEnoughClientsError": "validation", "Rejection": "validation",
          "validate_updates": "validation"}


def __getattr__(name: str) -> Any:
    """Public names load on first use: `asymlora comm` reads a config and never needs torch."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)


__all__ = [
    "METHOD_NAMES", "FederatedMethod", "build_method", "comm_cost", "measure_comm", "RoundResult",
    "server_round", "ClientUpdate", "NotEnoughClientsError", "Rejection", "validate_updates",
]
