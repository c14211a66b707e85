from __future__ import annotations

import json

import pytest
import torch

from asymlora.adapters import iter_adapter_layers
from asymlora.adapters.export import mean_gates as export_mean_gates
from asymlora.analysis.gates import GateMapCallback, collect_example_gates, gate_map


def _batches(n_batches: int = 3, b: int = 4, s: int = 7):
    gen = torch.Generator().manual_seed(0)
    out = []
    for k in range(n_batches):
        ids = torch.randint(0, 100, (b, s), generator=gen)
        mask = torch.ones(b, s, dtype=torch.long)
        mask[0, -3:] = 0  # one right-padded example per batch
        out.append({"input_ids": ids, "attention_mask": mask, "task_ids": torch.tensor([k % 2] * b)})
    return out


def test_collect_example_gates_matches_a_per_example_reference(make_adapted):
    model = make_adapted("alora")
    model.train()  # collection must switch to eval and back
    batches = _batches()
    gates, tasks = collect_example_gates(model, batches, task_names=["boolq", "piqa"])
    layers = [name for name, _ in iter_adapter_layers(model)]
    assert list(gates) == layers and model.training
    assert all(g.shape == (12, 3) for g in gates.values())
    assert tasks == ["boolq"] * 4 + ["piqa"] * 4 + ["boolq"] * 4
    assert torch.allclose(gates[layers[0]].sum(-1), torch.ones(12))
    # example 0 of batch 1, run alone on its real tokens, through the adapter package's own averaging
    ex = {"input_ids": batches[1]["input_ids"][:1, :4], "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    ref = export_mean_gates(model, [ex])
    for name in layers:
        assert torch.allclose(gates[name][4], ref[name], atol=1e-5), name


def test_gate_map_writes_json_and_png(make_adapted, tmp_path):
    model = make_adapted("hydralora")
    files = gate_map(model, _batches(), tmp_path, task_names=["boolq", "piqa"])
    data = json.loads((tmp_path / "gates.json").read_text())
    layers = [name for name, _ in iter_adapter_layers(model)]
    assert data["layer"] == layers[-1]  # the paper maps the last layer
    assert set(data["per_task_mean"]) == {"boolq", "piqa"} and len(data["examples"]) == 12
    assert files["png"].endswith("gates_tsne.png") and (tmp_path / "gates_tsne.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(KeyError, match="no routed layer named 'nope'"):
        gate_map(model, _batches(1), tmp_path, layer="nope")
    with pytest.raises(ValueError, match="task id 1 outside task_names"):
        collect_example_gates(model, _batches(2), task_names=["only"])
    with pytest.raises(KeyError, match="batch 0 has no 'input_ids'"):
        collect_example_gates(model, [{"attention_mask": torch.ones(1, 2)}])
    with pytest.raises(ValueError, match="routed"):
        collect_example_gates(make_adapted("moslora"), _batches(1))


def test_gate_map_callback_on_evaluate(make_adapted, tmp_path):
    from types import SimpleNamespace

    model = make_adapted("alora")
    cb = GateMapCallback(task_names=["a", "b"], max_batches=2)
    cb.on_evaluate(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=5), None,
                   model=model, eval_dataloader=_batches(4))
    data = json.loads((tmp_path / "analysis" / "gates_step5.json").read_text())
    assert len(data["examples"]) == 8  # max_batches=2 of 4 examples
    assert (tmp_path / "analysis" / "gates_step5_tsne.png").is_file()
