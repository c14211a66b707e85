"""`asymlora comm`: the communication table of a method from a model config, no weights needed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .comm import COMM_METHODS, KNOWN_MODULES, comm_cost, format_table


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `comm` subcommand; its handler is `args.func(args) -> exit code`."""
    p = subparsers.add_parser(
        "comm", help="parameters and bytes each client sends and receives per round",
        description="Communication per client per round of a federated method, from a transformers "
                    "config alone. Reproduces the paper's Params.(M) (Tables 4-5).")
    p.add_argument("--model", required=True, help="transformers config.json, or a folder that holds one")
    p.add_argument("--targets", default="q_proj,v_proj",
                   help=f"comma-separated adapted modules (known: {','.join(KNOWN_MODULES)})")
    p.add_argument("--method", required=True, choices=COMM_METHODS)
    p.add_argument("--ranks", required=True, type=_int_list,
                   help="one rank for all clients, or one per client: 64,64,32,32,16,16,8,8")
    p.add_argument("--dm", type=int, default=None,
                   help="d_m of the decomposition; with it fedalora/fedsa run heterogeneous")
    p.add_argument("--num-clients", type=int, default=None, help="clients sharing a single --ranks value")
    p.add_argument("--dtype-bytes", type=int, default=4, help="bytes per parameter sent (4 float32, 2 bf16)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.set_defaults(func=run_comm)
    return p


def run_comm(args: argparse.Namespace) -> int:
    try:
        report = comm_cost(args.model, args.targets.split(","), args.method, args.ranks, dm=args.dm,
                           num_clients=args.num_clients, dtype_bytes=args.dtype_bytes)
    except (ValueError, FileNotFoundError) as exc:
        print(f"asymlora comm: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_table(report))
    return 0
