"""Figures in the style of the paper's Figures 1-3, plus the JSON / Markdown writers beside them.

Each plot function takes plain lists (so results can be redrawn from their JSON), writes one PNG
and returns its path.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files import write_json_atomic  # noqa: E402

__all__ = [
    "short_layer_name",
    "write_json",
    "write_markdown_table",
    "plot_layer_similarity",
    "plot_similarity_panels",
    "plot_dynamics",
    "plot_gradient_conflicts",
]

from .adapter_files import layer_order_key  # noqa: E402

_LAYER_RE = re.compile(r"layers?\.(\d+)\.")


def short_layer_name(name: str) -> str:
    """'base_model.model.model.layers.3.self_attn.q_proj' -> 'L3.q_proj' (tick labels stay legible)."""
    m = _LAYER_RE.search(name)
    leaf = name.rsplit(".", 1)[-1]
    return f"L{m.group(1)}.{leaf}" if m else name


def _values(seq: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in seq], dtype=float)


def _prepare(out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _finish(fig: plt.Figure, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def write_json(obj: Any, path: str | Path) -> Path:
    """Write results as indented JSON (NaN is not valid JSON, so non-finite floats become null)."""

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, Mapping):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return write_json_atomic(_prepare(path), clean(obj))


def write_markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], path: str | Path,
                         title: str | None = None, note: str | None = None) -> Path:
    """A Markdown table, numbers to 4 decimals, None shown as an en dash."""

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells for {len(headers)} headers")
    lines = []
    if title:
        lines += [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    out = _prepare(path)
    out.write_text("\n".join(lines) + "\n")
    return out


def _check_lengths(layers: Sequence[str], **series: Sequence[Any]) -> None:
    for name, s in series.items():
        if len(s) != len(layers):
            raise ValueError(f"{name} has {len(s)} values for {len(layers)} layers")


def plot_similarity_panels(
    panels: Sequence[tuple[str, Sequence[str], Sequence[float | None], Sequence[float | None]]],
    out_png: str | Path,
) -> Path:
    """Figure 1: one panel per comparison (title, layers, Sim of A, Sim of B), bars per layer."""
    if not panels:
        raise ValueError("no panels to plot")
    out = _prepare(out_png)
    width = min(16.0, max(6.0, 0.2 * max(len(p[1]) for p in panels)))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.0 * len(panels)), squeeze=False)
    for ax, (title, layers, sim_A, sim_B) in zip(axes[:, 0], panels):
        _check_lengths(layers, sim_A=sim_A, sim_B=sim_B)
        x = np.arange(len(layers))
        ax.bar(x - 0.2, _values(sim_A), 0.4, label="A", color="#4C72B0")
        ax.bar(x + 0.2, _values(sim_B), 0.4, label="B", color="#DD8452")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("subspace similarity")
        ax.set_title(title)
        ax.set_xticks(x)
        ax.set_xticklabels([short_layer_name(n) for n in layers], rotation=90, fontsize=6)
        ax.legend(fontsize=8)
    return _finish(fig, out)


def plot_layer_similarity(
    layers: Sequence[str],
    sim_A: Sequence[float | None],
    sim_B: Sequence[float | None],
    out_png: str | Path,
    title: str = "Layer-wise similarity",
) -> Path:
    """One Figure-1 panel: Sim of A and of B for each adapted layer."""
    return plot_similarity_panels([(title, layers, sim_A, sim_B)], out_png)


def plot_dynamics(
    layers: Sequence[str],
    metrics: Mapping[str, Mapping[str, Sequence[float | None]]],
    out_png: str | Path,
    title: str | None = None,
) -> Path:
    """Figure 2: panels 'sim', 'dM', 'dD', each with one line per factor ('A', 'B', 'dW')."""
    order = [k for k in ("sim", "dM", "dD") if k in metrics] + [
        k for k in metrics if k not in ("sim", "dM", "dD")
    ]
    if not order:
        raise ValueError("no metrics to plot")
    labels = {"sim": "similarity (before vs after)", "dM": "magnitude change ΔM", "dD": "direction change ΔD"}
    colours = {"A": "#4C72B0", "B": "#DD8452", "dW": "#55A868"}
    out = _prepare(out_png)
    # panels stacked, one per measure: with many layers, side-by-side panels become unreadably wide
    width = min(16.0, max(6.0, 0.18 * len(layers)))
    fig, axes = plt.subplots(len(order), 1, figsize=(width, 2.8 * len(order)), squeeze=False, sharex=True)
    x = np.arange(len(layers))
    for ax, key in zip(axes[:, 0], order):
        for factor, vals in metrics[key].items():
            _check_lengths(layers, **{f"{key}[{factor}]": vals})
            ax.plot(x, _values(vals), marker="o", ms=3, label=factor, color=colours.get(factor))
        ax.set_title(labels.get(key, key))
        ax.set_xticks(x)
        ax.set_xticklabels([short_layer_name(n) for n in layers], rotation=90, fontsize=6)
        if key == "sim":
            ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, out)


def plot_gradient_conflicts(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    out_png: str | Path,
    title: str | None = None,
) -> Path:
    """Figure 3: left, shared-matrix gradient norm over steps (mean over layers); right, conflicts per
    layer (mean over steps). `series` maps a label (e.g. 'sharing A (HydraLoRA)') to records with
    keys step, layer, grad_norm, n_conflicts."""
    if not series:
        raise ValueError("no series to plot")
    out = _prepare(out_png)
    fig, (ax_n, ax_c) = plt.subplots(1, 2, figsize=(11, 3.8))
    all_layers: list[str] = []
    seen: set[str] = set()
    per_series: dict[str, tuple[dict[int, list[float]], dict[str, list[float]]]] = {}
    for label, records in series.items():
        by_step: dict[int, list[float]] = defaultdict(list)
        by_layer: dict[str, list[float]] = defaultdict(list)
        for i, rec in enumerate(records):
            for key in ("step", "layer", "grad_norm", "n_conflicts"):
                if key not in rec:
                    raise KeyError(f"series {label!r} record {i} lacks {key!r}")
            by_step[int(rec["step"])].append(float(rec["grad_norm"]))
            by_layer[str(rec["layer"])].append(float(rec["n_conflicts"]))
            if str(rec["layer"]) not in seen:
                seen.add(str(rec["layer"]))
                all_layers.append(str(rec["layer"]))
        per_series[label] = (by_step, by_layer)
    all_layers.sort(key=layer_order_key)
    n_series = len(per_series)
    bar_w = 0.8 / n_series
    x = np.arange(len(all_layers))
    for k, (label, (by_step, by_layer)) in enumerate(per_series.items()):
        steps = sorted(by_step)
        ax_n.plot(steps, [float(np.mean(by_step[s])) for s in steps], label=label)
        conf = [float(np.mean(by_layer[n])) if n in by_layer else np.nan for n in all_layers]
        ax_c.bar(x - 0.4 + bar_w * (k + 0.5), conf, bar_w, label=label)
    ax_n.set_xlabel("step")
    ax_n.set_ylabel("gradient norm of the shared matrix")
    ax_n.set_title("gradient magnitude (mean over layers)")
    ax_n.legend(fontsize=8)
    ax_c.set_ylabel("conflicting expert pairs")
    ax_c.set_title("gradient conflicts per layer (mean over steps)")
    ax_c.set_xticks(x)
    ax_c.set_xticklabels([short_layer_name(n) for n in all_layers], rotation=90, fontsize=6)
    ax_c.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, out)
