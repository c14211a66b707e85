from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from asymlora.analysis.gates import mean_gates, plot_gate_tsne, tsne_embedding, write_gate_json  # noqa: E402
from asymlora.analysis.plots import (  # noqa: E402
    plot_dynamics,
    plot_gradient_conflicts,
    plot_layer_similarity,
    plot_similarity_panels,
    short_layer_name,
    write_json,
    write_markdown_table,
)


def _is_png(path) -> bool:
    img = mpimg.imread(path)
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img.shape[0] > 100 and img.shape[1] > 100


def test_mean_gates_ignores_padding():
    gates = torch.tensor(
        [
            [[0.2, 0.8], [0.6, 0.4], [0.0, 1.0]],
            [[1.0, 0.0], [0.5, 0.5], [0.3, 0.7]],
        ]
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = mean_gates(gates, mask)
    assert torch.allclose(out, torch.tensor([[0.4, 0.6], [0.6, 0.4]]))
    assert torch.allclose(mean_gates(gates[0]), torch.tensor([[0.8 / 3, 2.2 / 3]]))
    with pytest.raises(ValueError, match="example 0 in the batch has no unmasked token"):
        mean_gates(gates, torch.tensor([[0, 0, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="does not match"):
        mean_gates(gates, torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"\(batch, seq, n\)"):
        mean_gates(torch.ones(3))


def test_tsne_small_sets_and_clusters(tmp_path):
    rng = np.random.default_rng(0)
    # Two well separated tasks: their gate vectors live near different corners of the simplex.
    a = np.clip(rng.normal([0.8, 0.1, 0.1], 0.02, size=(8, 3)), 0, 1)
    b = np.clip(rng.normal([0.1, 0.1, 0.8], 0.02, size=(8, 3)), 0, 1)
    emb = tsne_embedding(np.vstack([a, b]), perplexity=30.0)  # perplexity lowered for 16 points
    assert emb.shape == (16, 2)
    ca, cb = emb[:8].mean(0), emb[8:].mean(0)
    spread = max(np.linalg.norm(emb[:8] - ca, axis=1).max(), np.linalg.norm(emb[8:] - cb, axis=1).max())
    assert np.linalg.norm(ca - cb) > spread  # the two tasks do not overlap
    assert tsne_embedding(np.random.rand(3, 3)).shape == (3, 2)
    assert tsne_embedding(np.random.rand(4, 1)).shape == (4, 2)
    with pytest.raises(ValueError, match="at least 2 points"):
        tsne_embedding(np.ones((1, 3)))

    labels = ["boolq"] * 8 + ["piqa"] * 8
    png = plot_gate_tsne(np.vstack([a, b]), labels, tmp_path / "g" / "tsne.png")
    assert _is_png(png)
    with pytest.raises(ValueError, match="15 labels for 16 gate vectors"):
        plot_gate_tsne(np.vstack([a, b]), labels[:-1], tmp_path / "x.png")

    js = write_gate_json(torch.tensor(np.vstack([a, b])), labels, tmp_path / "gates.json")
    data = json.loads(js.read_text())
    assert len(data["examples"]) == 16 and data["examples"][9]["task"] == "piqa"
    assert data["per_task_mean"]["boolq"] == pytest.approx(a.mean(0).tolist(), abs=1e-6)


def test_plots_write_pngs_and_check_lengths(tmp_path):
    layers = [f"base_model.model.model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert short_layer_name(layers[1]) == "L0.v_proj"
    assert short_layer_name("lm_head") == "lm_head"
    p = plot_layer_similarity(layers, [0.9, 0.8, 0.95, None], [0.3, 0.4, 0.2, 0.1], tmp_path / "sim.png")
    assert _is_png(p)
    p = plot_similarity_panels(
        [("same seed", layers, [1.0] * 4, [0.5] * 4), ("different seeds", layers, [0.1] * 4, [0.4] * 4)],
        tmp_path / "fig1.png",
    )
    assert _is_png(p)
    with pytest.raises(ValueError, match="sim_B has 3 values for 4 layers"):
        plot_layer_similarity(layers, [0.1] * 4, [0.1] * 3, tmp_path / "bad.png")

    metrics = {
        "sim": {"A": [0.99] * 4, "B": [0.2] * 4},
        "dM": {"A": [0.1] * 4, "B": [0.5] * 4, "dW": [0.01] * 4},
        "dD": {"A": [0.01] * 4, "B": [0.9] * 4, "dW": [0.8] * 4},
    }
    assert _is_png(plot_dynamics(layers, metrics, tmp_path / "fig2.png", title="dyn"))
    with pytest.raises(ValueError, match=r"dD\[B\] has 2 values"):
        plot_dynamics(layers, {"dD": {"B": [0.1, 0.2]}}, tmp_path / "bad2.png")

    recs_a = [{"step": s, "layer": l, "grad_norm": 0.01, "n_conflicts": 2} for s in range(3) for l in layers]
    recs_b = [{"step": s, "layer": l, "grad_norm": 0.5, "n_conflicts": 0} for s in range(3) for l in layers]
    p = plot_gradient_conflicts({"sharing A": recs_a, "sharing B": recs_b}, tmp_path / "fig3.png")
    assert _is_png(p)
    with pytest.raises(KeyError, match="record 0 lacks 'grad_norm'"):
        plot_gradient_conflicts({"x": [{"step": 0, "layer": "a", "n_conflicts": 1}]}, tmp_path / "b3.png")


def test_writers(tmp_path):
    p = write_json({"a": [1.0, float("nan")], "b": {"c": float("inf"), "d": "x"}}, tmp_path / "o" / "r.json")
    assert json.loads(p.read_text()) == {"a": [1.0, None], "b": {"c": None, "d": "x"}}
    md = write_markdown_table(["layer", "Sim A"], [["L0.q_proj", 0.123456], ["L1.q_proj", None]],
                              tmp_path / "r.md", title="Similarity")
    text = md.read_text()
    assert "# Similarity" in text
    assert "| L0.q_proj | 0.1235 |" in text
    assert "| L1.q_proj | – |" in text
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 headers"):
        write_markdown_table(["a", "b"], [["x"]], tmp_path / "bad.md")
