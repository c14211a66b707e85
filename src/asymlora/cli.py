"""`asymlora`: one entry point. Each area registers its own subcommands; this file only assembles them
and turns the errors users cause (bad files, bad values) into a message and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

# Each module exposes register(subparsers); handlers take the parsed args and return an exit code.
COMMAND_MODULES = (
    "asymlora.train.commands",
    "asymlora.federated.commands",
    "asymlora.analysis.commands",
)

# Errors that mean "the input was wrong", reported in one line rather than a traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, TypeError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asymlora",
        description="Multi-LoRA fine-tuning with asymmetric parameter sharing (ALoRA, Fed-ALoRA).",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None) or getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except USER_ERRORS as exc:
        if args.traceback:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"asymlora {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `asymlora ... | head`: the reader left; nothing to report
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"asymlora {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
