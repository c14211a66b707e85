"""Layer-wise comparisons of two saved adapters: Figure 1 (two runs) and Figure 2 (before/after).

Experts are matched by index: with the same seed, expert i of two runs starts from the same draw,
which is exactly the effect Figure 1 separates from shared knowledge. Each run writes JSON (every
number), Markdown (a table to read) and a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from .adapter_files import AdapterFactors, check_comparable, load_adapter_factors
from .dynamics import magnitude_direction_change
from .plots import plot_dynamics, plot_layer_similarity, short_layer_name, write_json, write_markdown_table
from .similarity import DegenerateSubspaceError, similarity_of_A, similarity_of_B

__all__ = ["layer_similarity", "layer_dynamics", "run_similarity", "run_dynamics"]


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(values) else None


def _per_expert(fn: Callable[[Tensor, Tensor], float], X1: Tensor, X2: Tensor, layer: str, factor: str,
                notes: list[dict[str, Any]]) -> list[float | None]:
    out: list[float | None] = []
    for i in range(X1.shape[0]):
        try:
            out.append(fn(X1[i], X2[i]))
        except DegenerateSubspaceError as exc:
            out.append(None)
            notes.append({"layer": layer, "factor": factor, "expert": i, "reason": str(exc)})
    return out


def _mean_over(layers: list[dict[str, Any]], key: str) -> float | None:
    vals = [row[key] for row in layers if row.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def layer_similarity(a: AdapterFactors, b: AdapterFactors) -> dict[str, Any]:
    """Per layer, Sim of A and of B between two adapters (mean over matched experts, and each expert)."""
    check_comparable(a, b, ("RUN_A", "RUN_B"))
    notes: list[dict[str, Any]] = []
    rows = []
    for name, fa in a.layers.items():
        fb = b.layers[name]
        sa = _per_expert(similarity_of_A, fa.A, fb.A, name, "A", notes)
        sb = _per_expert(similarity_of_B, fa.B, fb.B, name, "B", notes)
        rows.append({"layer": name, "sim_A": _mean(sa), "sim_B": _mean(sb), "sim_A_experts": sa, "sim_B_experts": sb})
    return {
        "method": a.method,
        "run_a": str(a.path),
        "run_b": str(b.path),
        "layers": rows,
        "mean": {"sim_A": _mean_over(rows, "sim_A"), "sim_B": _mean_over(rows, "sim_B")},
        "notes": notes,
    }


def layer_dynamics(before: AdapterFactors, after: AdapterFactors) -> dict[str, Any]:
    """Per layer, Sim / dM / dD of A and B (mean over experts) and dM / dD of dW = s B A where static."""
    check_comparable(before, after, ("BEFORE", "AFTER"))
    notes: list[dict[str, Any]] = []
    rows = []
    for name, f0 in before.layers.items():
        f1 = after.layers[name]
        row: dict[str, Any] = {"layer": name}
        row["sim_A"] = _mean(_per_expert(similarity_of_A, f0.A, f1.A, name, "A", notes))
        row["sim_B"] = _mean(_per_expert(similarity_of_B, f0.B, f1.B, name, "B", notes))
        for factor, X0, X1 in (("A", f0.A, f1.A), ("B", f0.B, f1.B)):
            pairs = [magnitude_direction_change(X0[i], X1[i]) for i in range(X0.shape[0])]
            row[f"dM_{factor}"] = sum(p[0] for p in pairs) / len(pairs)
            row[f"dD_{factor}"] = sum(p[1] for p in pairs) / len(pairs)
        W0, W1 = f0.delta_weight(), f1.delta_weight()
        if W0 is None or W1 is None:
            row["dM_dW"] = row["dD_dW"] = None
        else:
            row["dM_dW"], row["dD_dW"] = magnitude_direction_change(W0, W1)
        rows.append(row)
    if before.method != "lora":
        notes.append({"factor": "dW", "reason": f"{before.label} routes each token, so it has no static dW"})
    keys = ["sim_A", "sim_B", "dM_A", "dD_A", "dM_B", "dD_B", "dM_dW", "dD_dW"]
    return {
        "method": before.method,
        "before": str(before.path),
        "after": str(after.path),
        "layers": rows,
        "mean": {k: _mean_over(rows, k) for k in keys},
        "notes": notes,
    }


def _note_lines(notes: list[dict[str, Any]]) -> str | None:
    if not notes:
        return None
    shown = [f"- {n.get('layer', 'all layers')} {n['factor']}: {n['reason']}" for n in notes[:10]]
    more = [f"- ... and {len(notes) - 10} more (see the JSON)"] if len(notes) > 10 else []
    return "Undefined values (shown as –):\n" + "\n".join(shown + more)


def run_name(path: str | Path) -> str:
    """A readable name for an adapter directory: `run/adapter` is named after its run."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.name in ("adapter", "") or path.name.startswith("step-") \
        else path.name


def run_similarity(dir_a: str | Path, dir_b: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Figure 1 for two saved adapters: writes similarity.json / .md / .png under out_dir."""
    a, b = load_adapter_factors(dir_a), load_adapter_factors(dir_b)
    result = layer_similarity(a, b)
    out = Path(out_dir)
    rows = result["layers"]
    names = [r["layer"] for r in rows]
    title = f"{a.label}: {run_name(dir_a)} vs {run_name(dir_b)}"
    files = {
        "json": str(write_json(result, out / "similarity.json")),
        "markdown": str(write_markdown_table(
            ["layer", "Sim A", "Sim B"],
            [[short_layer_name(r["layer"]), r["sim_A"], r["sim_B"]] for r in rows]
            + [["mean", result["mean"]["sim_A"], result["mean"]["sim_B"]]],
            out / "similarity.md",
            title=f"Subspace similarity, {title}",
            note=_note_lines(result["notes"]),
        )),
        "png": str(plot_layer_similarity(names, [r["sim_A"] for r in rows], [r["sim_B"] for r in rows],
                                         out / "similarity.png", title=title)),
    }
    result["files"] = files
    return result


def run_dynamics(dir_before: str | Path, dir_after: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Figure 2 for one adapter saved before and after training: writes dynamics.json / .md / .png."""
    before, after = load_adapter_factors(dir_before), load_adapter_factors(dir_after)
    result = layer_dynamics(before, after)
    out = Path(out_dir)
    rows = result["layers"]
    names = [r["layer"] for r in rows]
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    metrics: dict[str, dict[str, list]] = {
        "sim": {"A": col("sim_A"), "B": col("sim_B")},
        "dM": {"A": col("dM_A"), "B": col("dM_B")},
        "dD": {"A": col("dD_A"), "B": col("dD_B")},
    }
    if before.method == "lora":
        metrics["dM"]["dW"] = col("dM_dW")
        metrics["dD"]["dW"] = col("dD_dW")
    keys = ["sim_A", "sim_B", "dM_A", "dD_A", "dM_B", "dD_B", "dM_dW", "dD_dW"]
    title = f"{before.label}: {run_name(dir_before)} -> {run_name(dir_after)}"
    files = {
        "json": str(write_json(result, out / "dynamics.json")),
        "markdown": str(write_markdown_table(
            ["layer", "Sim A", "Sim B", "ΔM A", "ΔD A", "ΔM B", "ΔD B", "ΔM ΔW", "ΔD ΔW"],
            [[short_layer_name(r["layer"])] + [r[k] for k in keys] for r in rows]
            + [["mean"] + [result["mean"][k] for k in keys]],
            out / "dynamics.md",
            title=f"Learning dynamics, {title}",
            note=_note_lines(result["notes"]),
        )),
        "png": str(plot_dynamics(names, metrics, out / "dynamics.png", title=title)),
    }
    result["files"] = files
    return result
