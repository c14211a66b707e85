"""Gate activations per example and their t-SNE map coloured by task (paper Figure 6).

If the router sends different tasks to different experts, per-example mean gates form clusters
by task; the paper reads clearer clusters for ALoRA (several A experts) than for HydraLoRA.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import write_json_atomic

__all__ = [
    "mean_gates",
    "tsne_embedding",
    "plot_gate_tsne",
    "write_gate_json",
    "collect_example_gates",
    "gate_map",
    "GateMapCallback",
]


def mean_gates(gates: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Average token gates (batch, seq, n) over the real tokens of each example -> (batch, n).

    Padding tokens still get a gate from the router; leaving them in would pull every example
    towards the gate of the pad embedding.
    """
    if not isinstance(gates, Tensor):
        raise TypeError(f"gates must be a torch.Tensor, got {type(gates).__name__}")
    if gates.dim() == 2:
        gates = gates.unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask.unsqueeze(0)
    if gates.dim() != 3:
        raise ValueError(f"gates must be (batch, seq, n) or (seq, n), got shape {tuple(gates.shape)}")
    g = gates.detach().to(torch.float32)
    if attention_mask is None:
        return g.mean(dim=1)
    if attention_mask.shape != g.shape[:2]:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match gates' (batch, seq) "
            f"{tuple(g.shape[:2])}"
        )
    m = attention_mask.to(torch.float32)
    counts = m.sum(dim=1)
    if (counts == 0).any():
        bad = int(torch.nonzero(counts == 0)[0, 0])
        raise ValueError(f"example {bad} in the batch has no unmasked token")
    return (g * m.unsqueeze(-1)).sum(dim=1) / counts.unsqueeze(-1)


def tsne_embedding(features: np.ndarray | Tensor, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of (N, n) features; perplexity is lowered for small N (it must stay below N)."""
    from sklearn.manifold import TSNE

    X = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
    if X.ndim != 2:
        raise ValueError(f"features must be (N, n_features), got shape {X.shape}")
    N = X.shape[0]
    if N < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {N}")
    if not np.isfinite(X).all():
        raise ValueError("features contain NaN or infinite values")
    perp = max(1.0, min(float(perplexity), (N - 1) / 3.0))
    init = "pca" if X.shape[1] >= 2 else "random"
    # Exact gradients for the few hundred points a gate map has: faster than Barnes-Hut there, and
    # free of the OpenMP thread start-up that stalls on a busy machine.
    method = "exact" if N <= 1000 else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perp, init=init, random_state=seed, method=method)
    return tsne.fit_transform(X.astype(np.float64))


def plot_gate_tsne(
    features: np.ndarray | Tensor,
    labels: Sequence[str],
    out_png: str | Path,
    title: str = "Gate activations (t-SNE)",
    perplexity: float = 30.0,
    seed: int = 0,
) -> Path:
    """Scatter the t-SNE map of per-example gates, one colour per task; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(lab) for lab in labels]
    n_points = features.shape[0]
    if len(labels) != n_points:
        raise ValueError(f"{len(labels)} labels for {n_points} gate vectors")
    emb = tsne_embedding(features, perplexity=perplexity, seed=seed)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 5))
    tasks = sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(tasks) <= 10 else "tab20")
    lab_arr = np.asarray(labels)
    for k, task in enumerate(tasks):
        sel = lab_arr == task
        ax.scatter(emb[sel, 0], emb[sel, 1], s=12, color=cmap(k % cmap.N), label=task, alpha=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
    fig.tight_layout()
    fig.savefig(out_png, dpi=150)
    plt.close(fig)
    return out_png


def write_gate_json(features: np.ndarray | Tensor, labels: Sequence[str], out_json: str | Path,
                    extra: dict | None = None) -> Path:
    """Per-example mean gates with their task, so the map can be redrawn without re-running."""
    X = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
    if len(labels) != X.shape[0]:
        raise ValueError(f"{len(labels)} labels for {X.shape[0]} gate vectors")
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"task": str(lab), "gate": [float(v) for v in row]} for lab, row in zip(labels, X)]
    lab_arr = np.asarray([str(lab) for lab in labels])
    per_task = {
        task: [float(v) for v in X[lab_arr == task].mean(axis=0)] for task in sorted(set(lab_arr))
    }
    write_json_atomic(out_json, {**(extra or {}), "per_task_mean": per_task, "examples": rows}, indent=1)
    return out_json


def _task_labels(batch: dict, n: int, task_names: Sequence[str] | None, where: str) -> list[str]:
    raw = batch.get("task_ids", batch.get("task"))
    if raw is None:
        return ["all"] * n
    raw = raw.tolist() if isinstance(raw, Tensor) else list(raw)
    if len(raw) != n:
        raise ValueError(f"{where}: {len(raw)} task labels for {n} examples")
    out = []
    for t in raw:
        if isinstance(t, str):
            out.append(t)
        elif task_names is not None:
            if not 0 <= int(t) < len(task_names):
                raise ValueError(f"{where}: task id {t} outside task_names (length {len(task_names)})")
            out.append(str(task_names[int(t)]))
        else:
            out.append(f"task {int(t)}")
    return out


@torch.no_grad()
def collect_example_gates(
    model: torch.nn.Module,
    batches: Iterable[dict],
    adapter_name: str = "default",
    task_names: Sequence[str] | None = None,
    max_batches: int | None = None,
) -> tuple[dict[str, Tensor], list[str]]:
    """Per routed layer, each example's gate averaged over its real tokens -> ({layer: (N, n)}, tasks).

    Batches are the collator's dicts (input_ids, attention_mask and, for colouring, task_ids or
    task); the model runs in eval mode (no dropout) and gets its mode back afterwards.
    """
    from asymlora.adapters import record_gates

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_layer: dict[str, list[Tensor]] = {}
    tasks: list[str] = []
    try:
        for b, batch in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            if "input_ids" not in batch:
                raise KeyError(f"batch {b} has no 'input_ids' (keys: {sorted(batch)})")
            ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask.to(device)
            with record_gates(model, adapter_name) as rec:
                model(input_ids=ids, attention_mask=mask)
            for name, seen in rec.items():
                if len(seen) != 1:
                    raise RuntimeError(f"layer {name} ran {len(seen)} times in one forward; cannot split its gates")
                g = seen[0].reshape(ids.shape[0], ids.shape[1], -1)
                per_layer.setdefault(name, []).append(mean_gates(g, mask.cpu()))
            tasks += _task_labels(batch, ids.shape[0], task_names, f"batch {b}")
    finally:
        model.train(was_training)
    if not per_layer:
        raise ValueError("no gates were recorded: the batches were empty")
    return {name: torch.cat(v) for name, v in per_layer.items()}, tasks


def gate_map(
    model: torch.nn.Module,
    batches: Iterable[dict],
    out_dir: str | Path,
    adapter_name: str = "default",
    task_names: Sequence[str] | None = None,
    layer: str | None = None,
    max_batches: int | None = None,
    perplexity: float = 30.0,
    seed: int = 0,
    stem: str = "gates",
) -> dict[str, str]:
    """Figure 6: t-SNE of one layer's per-example gates coloured by task (default the last routed
    layer, as in the paper); writes <stem>.json and <stem>_tsne.png."""
    gates, tasks = collect_example_gates(model, batches, adapter_name, task_names, max_batches)
    names = list(gates)
    if layer is None:
        layer = names[-1]
    elif layer not in gates:
        raise KeyError(f"no routed layer named {layer!r}; routed layers: {names[:3]}{'...' if len(names) > 3 else ''}")
    out = Path(out_dir)
    js = write_gate_json(gates[layer], tasks, out / f"{stem}.json", extra={"layer": layer})
    png = plot_gate_tsne(gates[layer], tasks, out / f"{stem}_tsne.png", title=f"Gate activations, {layer}",
                         perplexity=perplexity, seed=seed)
    return {"json": str(js), "png": str(png)}


try:  # the callback needs transformers; the functions above do not
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object  # type: ignore[misc,assignment]


class GateMapCallback(TrainerCallback):  # type: ignore[misc]
    """At each evaluation, re-runs up to `max_batches` evaluation batches to map the gates
    (<out_dir>/gates_step<N>.json and _tsne.png; default out_dir <output_dir>/analysis)."""

    def __init__(self, adapter_name: str = "default", task_names: Sequence[str] | None = None,
                 layer: str | None = None, max_batches: int = 20, out_dir: str | Path | None = None) -> None:
        self.adapter_name = adapter_name
        self.task_names = task_names
        self.layer = layer
        self.max_batches = max_batches
        self.out_dir = out_dir
        self.files: list[dict[str, str]] = []

    def on_evaluate(self, args, state, control, model=None, eval_dataloader=None, **kwargs):  # noqa: ANN001
        if model is None or eval_dataloader is None:
            raise ValueError("GateMapCallback needs the model and the evaluation dataloader from the Trainer")
        out = Path(self.out_dir) if self.out_dir is not None else Path(args.output_dir) / "analysis"
        self.files.append(gate_map(model, eval_dataloader, out, self.adapter_name, self.task_names, self.layer,
                                   self.max_batches, stem=f"gates_step{state.global_step}"))
