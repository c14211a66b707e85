"""Two ALoRA training steps on the real SmolLM2-135M through `asymlora.train.train`."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from asymlora.data import make_demo_tasks


class SnapshotAtStart(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_two_alora_steps_on_smollm2(tmp_path):
    from asymlora.models import load_model
    from asymlora.train import train

    torch.set_num_threads(2)
    model, tok = load_model("smollm2-135m")
    base_before = {k: v.detach().clone() for k, v in model.named_parameters()}
    examples, _ = make_demo_tasks(2, 0, seed=0, tasks=["reverse", "add"])
    snap = SnapshotAtStart()
    res = train(model, tok, examples, "alora", tmp_path / "run", max_steps=2, batch_size=2, grad_accum=1,
                cutoff_len=64, logging_steps=1, learning_rate=1e-3, progress=False, save_steps=100,
                callbacks=[snap])
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    params = dict(res.model.named_parameters())
    adapter = {n: p for n, p in params.items() if p.requires_grad}
    assert set(adapter) == set(snap.adapter) and all("alora_" in n for n in adapter)
    assert len(adapter) == 30 * 2 * 3  # 30 layers x (q_proj, o_proj) x (A experts, B, router)
    # B starts at zero and moves at step 1; the A experts and the router get a gradient from step 2 on
    assert all(float(snap.adapter[n].abs().sum()) == 0 for n in adapter if "alora_B" in n)
    for name, p in adapter.items():
        assert not torch.equal(p.detach(), snap.adapter[name]), f"{name} did not change"
    for key, old in base_before.items():
        name = "base_model.model." + (key.replace(".weight", ".base_layer.weight")
                                      if key.endswith(("q_proj.weight", "o_proj.weight")) else key)
        assert torch.equal(params[name].detach(), old), f"base weight {key} changed"
