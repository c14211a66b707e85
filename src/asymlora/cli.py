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
# The command names and one-line helps are listed here too (a test keeps them equal to what each
# module registers), so that `asymlora --help` imports no module and the chosen command imports only
# its own: the start-up stays well under a second.
COMMANDS = {
    "demo": ("asymlora.train.commands",
             "LoRA vs HydraLoRA vs ALoRA on generated tasks with SmolLM2-135M (minutes, CPU)"),
    "train": ("asymlora.train.commands", "fine-tune one method on mixed tasks (Transformers Trainer underneath)"),
    "evaluate": ("asymlora.train.commands", "score a trained adapter (or the base model) on test data, per task"),
    "compare": ("asymlora.train.commands",
                "every method and single-task baselines on the same tasks, in the paper's table"),
    "export": ("asymlora.train.commands", "write a plain PEFT LoRA adapter for a fixed gate (servable anywhere)"),
    "federate": ("asymlora.federated.commands",
                 "federated fine-tuning of one method (Fed-ALoRA, FedIT, FedSA-LoRA, ...)"),
    "comm": ("asymlora.federated.commands", "parameters and bytes each client sends and receives per round"),
    "privacy": ("asymlora.federated.commands",
                "epsilon of DP rounds (or the noise multiplier for a target epsilon), nothing run"),
    "analyze": ("asymlora.analysis.commands",
                "why sharing B works: similarity, learning dynamics, gradient conflicts (paper Figures 1-3)"),
}
COMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))

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


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser with every command fully registered, or (`command` given) that command's module
    fully registered and the others listed by name only."""
    parser = argparse.ArgumentParser(
        prog="asymlora",
        description="Multi-LoRA fine-tuning with asymmetric parameter sharing (ALoRA, Fed-ALoRA).",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = COMMAND_MODULES if command is None else (COMMANDS[command][0],) if command in COMMANDS else ()
    for name in modules:
        importlib.import_module(name).register(subparsers)
    for name, (_, help_text) in COMMANDS.items():
        if name not in subparsers.choices:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> Optional[str]:
    """The command word of a command line (the first argument that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv) or "")
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
