"""A client's local training is `asymlora train`'s: at a fixed seed with dropout 0, a client's loss
curve equals that of `asymlora.train` on the same examples in the same order, from the same initial
adapter."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from asymlora.federated.client import FederatedClient, load_adapter_state, mix_seed
from asymlora.federated.local_training import trainer_seed
from asymlora.models import load_model
from asymlora.train import TrainConfig, train

from .runtime_helpers import tiny_config


class LoadState(TrainerCallback):
    """Puts the client's initial adapter into `train()`'s freshly drawn one before the first step."""

    def __init__(self, state):
        self.state = state

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        load_adapter_state(model, self.state)
        return control


def losses(log_history):
    return [row["loss"] for row in log_history if "loss" in row]


def test_a_clients_round_is_asymlora_train_on_the_same_examples(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2], n_train=[10], max_local_steps=4, rounds=1)
    client = FederatedClient(cfg, 0)
    initial = client.state
    fit = client.fit(1)
    (stats,) = client.last_train_stats
    curve = losses(stats.log_history)
    assert len(curve) == 4 and fit.metrics["steps"] == 4
    trained = client._trained.state

    base, tokenizer = load_model(str(model_dir), dtype=torch.float32)
    training = cfg.training.replace(seed=trainer_seed(mix_seed(mix_seed(cfg.seed, 0, 1), 10)), progress=False)
    assert training.lr_scheduler == "constant" and training.learning_rate == cfg.training.learning_rate
    result = train(base, tokenizer, client.examples()[0], "lora", tmp_path / "train", config=training,
                   adapter={"r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                   callbacks=[LoadState(initial)])
    reference = losses(result.log_history)
    assert reference == pytest.approx(curve, rel=1e-6, abs=0)
    assert curve[0] != curve[-1]                                   # it did learn something
    theirs = {k: v for k, v in result.model.state_dict().items() if k in trained}
    assert theirs.keys() == trained.keys()
    for k in trained:
        torch.testing.assert_close(theirs[k], trained[k], rtol=1e-5, atol=1e-7)


def test_local_training_leaves_the_process_generators_and_the_model_as_they_were(tmp_path, model_dir):
    import random

    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2], max_local_steps=1, rounds=1)
    client = FederatedClient(cfg, 0)
    torch.manual_seed(123)
    random.seed(5)
    client.fit(1)
    after_torch, after_py = torch.rand(1), random.random()
    torch.manual_seed(123)
    random.seed(5)
    assert torch.equal(after_torch, torch.rand(1)) and after_py == random.random()
    model = client._ensure_model()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not [p for p in client.store.root.iterdir() if p.is_dir()]   # no Trainer output left behind
