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


def _gates(args: argparse.Namespace) -> int:
    """Figure 6 from a trained run: each test prompt's mean gate at one routed layer, t-SNE, by task."""
    import torch

    from ..data.records import group_by_task, load_examples, load_task_dir
    from ..data.templates import get_template
    from ..data.tokenize import MultiTaskCollator, encode_prompt
    from ..train.trainer import load_trained
    from .gates import gate_map

    if bool(args.data_dir) == bool(args.data):
        raise ValueError("give the evaluation data as --data-dir DIR or one or more --data FILE")
    if args.data_dir:
        examples = load_task_dir(args.data_dir, args.split)
    else:
        examples = []
        for spec in args.data:  # FILE or TASK=FILE, as for `asymlora train`
            task, _, path = spec.rpartition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
            examples += load_examples(path, task=task or None)
    by_task = group_by_task(examples)
    examples = [ex for task in sorted(by_task) for ex in by_task[task][: args.max_per_task]]
    model, tokenizer, run = load_trained(args.adapter)
    template = get_template(run.get("training", {}).get("template", "alpaca_short"), tokenizer)
    names = sorted(by_task)
    features = [{"input_ids": encode_prompt(tokenizer, template, ex)[-args.cutoff_len:],
                 "task_id": names.index(ex.task)} for ex in examples]
    collate = MultiTaskCollator(tokenizer.pad_token_id)
    batches = [collate(features[i:i + args.batch_size]) for i in range(0, len(features), args.batch_size)]
    with torch.no_grad():
        files = gate_map(model, batches, args.out, task_names=names, layer=args.layer)
    print(f"gates of {len(features)} prompts from {len(names)} tasks")
    _print_files(files)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `analyze {similarity,dynamics,conflicts}` to an argparse subparsers object."""
    analyze = subparsers.add_parser(
        "analyze",
        help="why sharing B works: similarity, learning dynamics, gradient conflicts (paper Figures 1-3)",
        description="Compare saved adapters (safetensors) layer by layer, or plot recorded gradient conflicts.",
    )
    sub = analyze.add_subparsers(dest="analyze_command", metavar="{similarity,dynamics,conflicts,gates}")
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
    p = sub.add_parser("gates", help="t-SNE of per-prompt gate activations coloured by task (Figure 6)")
    p.add_argument("adapter", metavar="RUN", help="a run directory written by `asymlora train` (or its adapter/)")
    p.add_argument("--data-dir", help="a task folder (FLAN or LLM-Adapters layout)")
    p.add_argument("--data", action="append", default=[], metavar="[TASK=]FILE",
                   help="a JSON/JSONL file (repeatable); TASK= names its task when records carry none")
    p.add_argument("--split", default="test", choices=("train", "test"),
                   help="which split of --data-dir to map (default: %(default)s)")
    p.add_argument("--max-per-task", type=int, default=50, help="prompts per task (default: %(default)s)")
    p.add_argument("--layer", default=None, help="routed layer to map (default: the last one, as in the paper)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: %(default)s)")
    p.add_argument("--cutoff-len", type=int, default=256, help="tokens kept per prompt (default: %(default)s)")
    p.add_argument("--out", default="runs/analysis/gates", help="output directory (default: %(default)s)")
    p.set_defaults(func=_gates)
    return analyze
