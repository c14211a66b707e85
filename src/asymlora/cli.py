"""`asymlora`: one entry point. Each area registers its own subcommands; this file only assembles them
and turns the errors users cause (bad files, bad values) into a message and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

# Each module exposes register(subparsers); handlers take the parsed args and return an exit code.
COMMAND_MODULES = (
    "asymlora.train.commands",
    "asymlora.federated.commands",
    "asymlora.analysis.commands",
)

# Errors that mean "the input was wrong", reported in one line rather than a traceback. OSError
# covers files that cannot be read or written (permissions, a folder where a file should be, a
# full disk): its message names the file.
USER_ERRORS = (ValueError, KeyError, OSError, TypeError)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.strerror and exc.filename:  # raised by the system: "[Errno 13] ..."
        return f"cannot use {exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _data_warnings_one_line(default: Callable[..., None]) -> Callable[..., None]:
    """Warnings about the user's data as one line each; other warnings as `default` prints them."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        from .data.records import DataWarning

        if issubclass(category, DataWarning):
            print(f"asymlora: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


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
    shown = warnings.showwarning
    warnings.showwarning = _data_warnings_one_line(shown)
    try:
        return int(handler(args) or 0)
    except BrokenPipeError:  # `asymlora ... | head`: the reader left; nothing to report
        sys.stderr.close()
        return 0
    except USER_ERRORS as exc:
        if args.traceback:
            raise
        print(f"asymlora {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asymlora {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
