from __future__ import annotations

import json

import pytest
import torch

from asymlora.adapters import iter_adapter_layers
from asymlora.analysis.compare import run_dynamics
from asymlora.analysis.recorder import (
    AdapterSnapshotCallback,
    GradientConflictCallback,
    GradientConflictRecorder,
    load_conflicts,
    save_conflicts,
)


def _batch(seed: int, b: int = 2, s: int = 6):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (b, s), generator=gen)
    return {"input_ids": ids, "labels": ids.clone()}


def _shared_grad(layer, method: str) -> torch.Tensor:
    return (layer.alora_B if method == "alora" else layer.hydralora_A)["default"].grad


@pytest.mark.parametrize("method", ["alora", "hydralora"])
def test_recorded_components_sum_to_the_shared_gradient(make_adapted, method):
    model = make_adapted(method, dropout=0.2, zero_b=False)  # dropout on: A must see the dropped x
    model.train()
    layers = list(iter_adapter_layers(model))
    with GradientConflictRecorder(model) as rec:
        for step in (1, 2):
            model.zero_grad()
            for micro in range(2):  # gradient accumulation: components sum over micro-batches
                torch.manual_seed(100 * step + micro)
                (model(**_batch(10 * step + micro)).loss / 2).backward()
            pending = rec.pending()
            assert set(pending) == {name for name, _ in layers}
            for name, layer in layers:
                grad = _shared_grad(layer, method)
                assert pending[name].shape[0] == 3
                assert torch.allclose(pending[name].sum(0), grad, rtol=1e-4, atol=1e-7), name
            new = rec.end_step(step)
            assert len(new) == len(layers)
            for record, (name, layer) in zip(new, layers):
                assert record["layer"] == name and record["step"] == step
                assert record["shared"] == ("B" if method == "alora" else "A")
                assert record["grad_norm"] == pytest.approx(_shared_grad(layer, method).norm().item(), rel=1e-4)
                assert 0 <= record["n_conflicts"] <= record["n_pairs"] == 3
    assert [(r["step"], r["layer"]) for r in rec.records] == [(s, n) for s in (1, 2) for n, _ in layers]
    # detached: further training leaves nothing pending
    model(**_batch(99)).loss.backward()
    assert rec.pending() == {}


def test_no_grad_and_disabled_forwards_are_not_recorded(make_adapted):
    model = make_adapted("alora", zero_b=False)
    with GradientConflictRecorder(model) as rec:
        with torch.no_grad():
            model(**_batch(0))
        rec.enabled = False
        model(**_batch(1)).loss.backward()
        assert rec.pending() == {}
        assert rec.end_step(1) == []


def test_model_without_routed_layers_is_refused(make_adapted):
    with pytest.raises(ValueError, match="no ALoRA or HydraLoRA layer with more than one expert"):
        GradientConflictRecorder(make_adapted("moslora"))
    with pytest.raises(ValueError, match="no ALoRA or HydraLoRA layer"):
        GradientConflictRecorder(make_adapted("alora"), adapter_name="other")


def test_save_and_load_round_trip(tmp_path):
    recs = [{"step": 1, "layer": "l.0.q_proj", "method": "alora", "shared": "B", "grad_norm": 0.5,
             "component_norms": [0.1, 0.2, 0.3], "n_conflicts": 1, "n_pairs": 3}]
    files = save_conflicts(recs, tmp_path)
    label, loaded = load_conflicts(files["json"])
    assert label == "sharing B (alora)" and loaded == recs
    (tmp_path / "bad.json").write_text(json.dumps({"records": [{"step": 1}]}))
    with pytest.raises(ValueError, match=r"record 0 lacks \['layer', 'grad_norm', 'n_conflicts'\]"):
        load_conflicts(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_conflicts(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no gradient-conflict records"):
        save_conflicts([], tmp_path)


def test_trainer_callback_records_one_entry_per_step_and_layer(make_adapted, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = make_adapted("hydralora", zero_b=True)  # the real set-up: B starts at zero
    rows = [_batch(i, b=1) for i in range(12)]
    ds = Dataset.from_list([{k: v[0].tolist() for k, v in r.items()} for r in rows])
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, learning_rate=1e-2, report_to="none",
                             save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True)
    cb = GradientConflictCallback(every=2)
    snap = AdapterSnapshotCallback(steps=(2,))
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb, snap]).train()
    layers = [name for name, _ in iter_adapter_layers(model)]
    got = [(r["step"], r["layer"]) for r in cb.recorder.records]
    assert got == [(s, n) for s in (1, 3) for n in layers]  # every=2: steps 1 and 3
    # B is zero at step 1, so the shared A gets no gradient at all; by step 3 it does
    first = {r["layer"]: r for r in cb.recorder.records if r["step"] == 1}
    assert all(r["grad_norm"] == 0.0 and r["n_conflicts"] == 0 for r in first.values())
    assert any(r["grad_norm"] > 0 for r in cb.recorder.records if r["step"] == 3)
    data = json.loads((tmp_path / "run" / "analysis" / "gradient_conflicts.json").read_text())
    assert len(data["records"]) == 2 * len(layers)
    assert (tmp_path / "run" / "analysis" / "gradient_conflicts.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="every must be a positive integer"):
        GradientConflictCallback(every=0)

    # Figure 2's BEFORE: the adapter at step 2, compared with the final one
    assert snap.saved == {2: str(tmp_path / "run" / "snapshots" / "step-2")}
    model.save_pretrained(str(tmp_path / "final"))
    dyn = run_dynamics(snap.saved[2], tmp_path / "final", tmp_path / "dyn")
    assert dyn["method"] == "hydralora" and len(dyn["layers"]) == len(layers)
    assert all(r["sim_B"] is not None and r["dM_B"] > 0 for r in dyn["layers"])  # B moved after step 2
    with pytest.raises(ValueError, match="steps must be positive integers"):
        AdapterSnapshotCallback(steps=(0,))
