"""`asymlora analyze ...`: the analysis commands, added to the CLI's argparse subparsers.

Each sub-command sets `func` to a handler taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _print_files(files: dict[str, str]) -> None:
    for kind, path in files.items():
        print(f"  {kind:8s} {path}")


def _similarity(args: argparse.Namespace) -> int:
    from .compare import run_similarity

    result = run_similarity(args.run_a, args.run_b, args.out)
    mean = result["mean"]
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{len(result['layers'])} layers ({result['method']}): mean Sim A {fmt(mean['sim_A'])}, "
          f"mean Sim B {fmt(mean['sim_B'])}")
    _print_files(result["files"])
    return 0


def _dynamics(args: argparse.Namespace) -> int:
    from .compare import run_dynamics

    result = run_dynamics(args.before, args.after, args.out)
    m = result["mean"]
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{len(result['layers'])} layers ({result['method']}): Sim A {fmt(m['sim_A'])}, Sim B {fmt(m['sim_B'])}; "
          f"ΔM A {fmt(m['dM_A'])}, B {fmt(m['dM_B'])}, ΔW {fmt(m['dM_dW'])}; "
          f"ΔD A {fmt(m['dD_A'])}, B {fmt(m['dD_B'])}, ΔW {fmt(m['dD_dW'])}")
    _print_files(result["files"])
    return 0


def _conflicts(args: argparse.Namespace) -> int:
    from .plots import plot_gradient_conflicts, write_json
    from .recorder import load_conflicts

    series: dict[str, list[dict[str, Any]]] = {}
    for path in args.files:
        label, records = load_conflicts(path)
        while label in series:
            label += "'"
        series[label] = records
    out = Path(args.out)
    summary = {}
    for label, records in series.items():
        n = len(records)
        summary[label] = {
            "records": n,
            "mean_grad_norm": sum(r["grad_norm"] for r in records) / n if n else None,
            "mean_conflicts": sum(r["n_conflicts"] for r in records) / n if n else None,
        }
        print(f"{label}: {n} records, mean gradient norm {summary[label]['mean_grad_norm']}, "
              f"mean conflicts per layer and step {summary[label]['mean_conflicts']}")
    files = {
        "json": str(write_json({"series": summary, "sources": [str(p) for p in args.files]}, out / "conflicts.json")),
        "png": str(plot_gradient_conflicts(series, out / "conflicts.png")),
    }
    _print_files(files)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `analyze {similarity,dynamics,conflicts}` to an argparse subparsers object."""
    analyze = subparsers.add_parser(
        "analyze",
        help="why sharing B works: similarity, learning dynamics, gradient conflicts (paper Figures 1-3)",
        description="Compare saved adapters (safetensors) layer by layer, or plot recorded gradient conflicts.",
    )
    sub = analyze.add_subparsers(dest="analyze_command", metavar="{similarity,dynamics,conflicts}")
    sub.required = True

    p = sub.add_parser("similarity", help="layer-wise subspace similarity of A and of B between two runs (Figure 1)")
    p.add_argument("run_a", metavar="RUN_A", help="saved adapter directory")
    p.add_argument("run_b", metavar="RUN_B", help="saved adapter directory of the same method")
    p.add_argument("--out", default="runs/analysis/similarity", help="output directory (default: %(default)s)")
    p.set_defaults(func=_similarity)

    p = sub.add_parser("dynamics", help="Sim, magnitude and direction change of A, B and dW before/after (Figure 2)")
    p.add_argument("before", metavar="BEFORE", help="adapter saved early (B must not be all zero for Sim of B)")
    p.add_argument("after", metavar="AFTER", help="the same adapter after training")
    p.add_argument("--out", default="runs/analysis/dynamics", help="output directory (default: %(default)s)")
    p.set_defaults(func=_dynamics)

    p = sub.add_parser("conflicts", help="plot recorded gradient norms and conflicts of one or more runs (Figure 3)")
    p.add_argument("files", nargs="+", type=Path, metavar="JSON",
                   help="gradient_conflicts.json files written during training")
    p.add_argument("--out", default="runs/analysis/conflicts", help="output directory (default: %(default)s)")
    p.set_defaults(func=_conflicts)
    return analyze
