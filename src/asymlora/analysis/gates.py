"""Gate activations per example and their t-SNE map coloured by task (paper Figure 6).

If the router sends different tasks to different experts, per-example mean gates form clusters
by task; the paper reads clearer clusters for ALoRA (several A experts) than for HydraLoRA.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["mean_gates", "tsne_embedding", "plot_gate_tsne", "write_gate_json"]


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
    tsne = TSNE(n_components=2, perplexity=perp, init=init, random_state=seed)
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


def write_gate_json(features: np.ndarray | Tensor, labels: Sequence[str], out_json: str | Path) -> Path:
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
    out_json.write_text(json.dumps({"per_task_mean": per_task, "examples": rows}, indent=1))
    return out_json
