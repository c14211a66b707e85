"""A client's local training is `asymlora train`'s: at a fixed seed with dropout 0, a client's loss
curve equals that of `asymlora.train` on the same examples in the same order, from the same initial
adapter."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import TrainerCallback

from asymlora.federated.client import FederatedClient, load_adapter_state, mix_seed
from asymlora.federated.local_training import trainer_seed
from asymlora.models import load_model
from asymlora.train import train

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


@pytest.mark.parametrize("method,ranks", [("fedalora", [2, 1]), ("feddpa", [2, 2])])
def test_the_fast_path_follows_the_plain_one_in_a_client(tmp_path, model_dir, method, ranks):
    """Packing and the chunked loss, chosen in the training section, change a round's speed, not its
    curve (float rounding); FedDPA's two phases both take them."""
    curves, states = [], []
    for name, fast in (("plain", {}), ("fast", {"packing": True, "loss_chunk_size": 16})):
        cfg = tiny_config(tmp_path / name, model_dir, method, ranks, n_train=[8, 8], max_local_steps=3,
                          training={"batch_size": 4, **fast})
        assert cfg.training.packing == bool(fast)
        client = FederatedClient(cfg, 0)
        initial = client.state
        client.fit(1)
        curves.append([losses(s.log_history) for s in client.last_train_stats])
        states.append(client._trained.state)
    assert len(curves[0]) == (2 if method == "feddpa" else 1) and all(len(c) == 3 for c in curves[0])
    for plain, fast in zip(*curves):
        torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-4, atol=1e-5)
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k], rtol=1e-3, atol=1e-5, msg=k)
    assert any(not torch.equal(states[1][k], initial[k]) for k in initial)      # it trained


def test_federate_refuses_bad_values_in_one_line_before_loading_anything(tmp_path, model_dir, capsys, monkeypatch):
    import yaml

    from asymlora import models
    from asymlora.cli import main

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2])
    data = cfg.to_dict()
    for change, message in (({"data_dir": str(tmp_path / "missing")}, "data_dir: .*missing does not exist"),
                            ({"training": {**data["training"], "learning_rate": float("nan")}},
                             "training: learning_rate must be a finite number, got nan")):
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump({**data, **change}))
        assert main(["federate", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("asymlora federate: error: ")
        assert re.search(message, err), err
        assert not (tmp_path / "out").exists()
