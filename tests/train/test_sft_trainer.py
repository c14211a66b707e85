"""Our adapters are ordinary PEFT methods, so TRL's SFTTrainer trains them with no glue."""

from __future__ import annotations

import pytest
import torch

import asymlora  # noqa: F401
from asymlora.adapters import ALoRALayer, iter_adapter_layers
from asymlora.train.methods import make_peft_config

from . import helpers

trl = pytest.importorskip("trl")


def _dataset():
    from datasets import Dataset

    train, _ = helpers.tasks(n_train=4)
    return Dataset.from_list([
        {"prompt": f"### Instruction:\n{ex.instruction}\n\n### Input:\n{ex.input}\n\n### Response:\n",
         "completion": ex.output} for ex in train])


@pytest.mark.parametrize("method", ["alora", "hydralora"])
def test_sft_trainer_trains_our_adapter(tmp_path, method):
    base = helpers.model()
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    tok = helpers.tokenizer()
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                         learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no",
                         max_length=64, disable_tqdm=True, dataloader_pin_memory=False,
                         bf16=False)
    trainer = trl.SFTTrainer(model=base, args=args, train_dataset=_dataset(), processing_class=tok,
                             peft_config=make_peft_config(method, init_seed=0))
    model = trainer.model
    layers = list(iter_adapter_layers(model))
    assert len(layers) == 4  # q_proj and o_proj of 2 layers
    assert isinstance(layers[0][1], ALoRALayer) == (method == "alora")
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert init and all(method + "_" in n for n in init)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], p) for n, p in init.items()), "every adapter tensor moved"
    for key, old in base_before.items():
        name = "base_model.model." + (key.replace(".weight", ".base_layer.weight")
                                      if any(t in key for t in ("q_proj", "o_proj")) else key)
        assert torch.equal(after[name], old), key
