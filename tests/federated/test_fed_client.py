"""The federated client on a tiny real Llama: what it trains and sends, its private state on disk
(restart-safe, atomic, never mixed up with another run's), and how it takes in each kind of payload."""

from __future__ import annotations

import os

import pytest
import torch

from asymlora.federated.client import ClientStateError, FederatedClient, adapter_state
from asymlora.federated.keys import parse_key

from .runtime_helpers import tiny_config


def roles(tensors):
    return {parse_key(k).role for k in tensors}


def by_role(state, role):
    return {k: v for k, v in state.items() if parse_key(k).role == role}


def test_fedalora_sends_only_b_and_the_private_state_survives_a_restart(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2])
    client = FederatedClient(cfg, 0)
    start = client.state
    fit = client.fit(1)
    assert roles(fit.upload) == {"lora_B"} and fit.num_examples == 4
    trained = client.store.load("trained").state
    for k in by_role(start, "lora_A"):
        assert not torch.equal(trained[k], start[k])                  # A trained locally...
    restarted = FederatedClient(cfg, 0)                                 # ...and kept across a restart
    broadcast = {k: torch.full_like(v, 0.5) for k, v in fit.upload.items()}
    assert restarted.receive(broadcast, 1)
    for k, v in restarted.state.items():
        expected = broadcast[k] if k in broadcast else trained[k]
        torch.testing.assert_close(v, expected, rtol=0, atol=0)
    again = FederatedClient(cfg, 0)
    assert again.applied_round == 1
    assert all(torch.equal(again.state[k], restarted.state[k]) for k in restarted.state)
    assert not (client.store.root / "trained.safetensors").exists()
    assert sorted(p.name for p in client.store.root.iterdir()) == ["applied.safetensors"]


def test_state_of_another_run_is_refused(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2])
    FederatedClient(cfg, 0)
    other = tiny_config(tmp_path, model_dir, "fedsa", [2, 2], output_dir=cfg.output_dir)
    with pytest.raises(ClientStateError, match=r"applied\.safetensors belongs to another run or client"):
        FederatedClient(other, 0)


def test_a_failed_write_leaves_the_previous_state_intact(tmp_path, model_dir, monkeypatch):
    import safetensors.torch

    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2])
    client = FederatedClient(cfg, 1)
    path = client.store.root / "applied.safetensors"
    before = path.read_bytes()

    def torn_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", torn_write)
    with pytest.raises(OSError, match="disk full"):
        client.receive({k: torch.zeros_like(v) for k, v in client.state.items()}, 1)
    assert path.read_bytes() == before
    assert [p.name for p in client.store.root.iterdir()] == ["applied.safetensors"]  # no temporary left
    assert FederatedClient(cfg, 1).applied_round == 0


def test_training_a_round_twice_gives_the_same_update(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2], lora_dropout=0.1)
    client = FederatedClient(cfg, 0)
    first, second = client.fit(1), client.fit(1)
    assert first.upload.keys() == second.upload.keys()
    assert all(torch.equal(first.upload[k], second.upload[k]) for k in first.upload)
    assert not all(torch.equal(first.upload[k], client.state[k]) for k in first.upload)


def test_decomposition_trains_a_m_b1_b2_never_b0_and_sends_b1_b2(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 1])
    client = FederatedClient(cfg, 1)
    start = client.state
    fit = client.fit(1)
    assert roles(fit.upload) == {"declora_B1", "declora_B2"}
    trained = client.store.load("trained").state
    for role in ("declora_A", "declora_M", "declora_B1", "declora_B2"):
        assert all(not torch.equal(trained[k], start[k]) for k in by_role(start, role)), role
    assert all(torch.equal(trained[k], start[k]) for k in by_role(start, "declora_B0"))
    assert all(v.shape[0] == 1 for v in by_role(trained, "declora_A").values())   # the client's own rank


def test_running_total_lets_a_client_that_missed_rounds_catch_up(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 1])
    steady, late = FederatedClient(cfg, 0), FederatedClient(cfg, 1)
    b0 = by_role(steady.state, "declora_B0")
    g = torch.Generator().manual_seed(0)
    inc1 = {k: torch.randn(v.shape, generator=g) for k, v in b0.items()}
    inc2 = {k: torch.randn(v.shape, generator=g) for k, v in b0.items()}
    total1 = inc1
    total2 = {k: inc1[k] + inc2[k] for k in b0}
    steady.fit(1)
    assert steady.receive(total1, 1)
    assert all(not v.any() for v in by_role(steady.state, "declora_B2").values())  # own B2 B1 is in B0 now
    assert steady.receive(total2, 2)
    assert late.receive(total2, 2)                     # sat rounds 1 and 2 out
    assert not steady.receive(total2, 2)               # taking the same payload twice is a no-op
    for k in b0:
        torch.testing.assert_close(steady.state[k], total2[k])
        torch.testing.assert_close(late.state[k], total2[k])


def test_flora_merges_each_round_once_into_the_base_weights(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "flora", [2, 1])
    client = FederatedClient(cfg, 1)
    lora = client.state
    g = torch.Generator().manual_seed(1)
    stacks = {}
    for r, width in ((1, 3), (2, 2)):
        stacks[r] = {k: torch.randn((width, v.shape[1]) if parse_key(k).role == "lora_A" else (v.shape[0], width),
                                    generator=g) for k, v in lora.items()}
    payload = {f"{r}::{k}": v for r, s in stacks.items() for k, v in s.items()}
    assert client.receive({k: v for k, v in payload.items() if k.startswith("1::")}, 1)
    assert client.receive(payload, 2)                  # round 1 again in it: skipped
    modules = {parse_key(k).module for k in lora}
    for m in modules:
        a, b = (f"{m}.lora_A.default.weight", f"{m}.lora_B.default.weight")
        expected = sum(stacks[r][b] @ stacks[r][a] for r in (1, 2))
        torch.testing.assert_close(client.base_deltas[m], expected)
    assert all(not v.any() for v in by_role(client.state, "lora_B").values())
    # the live model's frozen weight is the pristine one plus the merged delta
    model = client._ensure_model()
    pristine, _ = client.base()
    m = sorted(modules)[0]
    inner = m.split("base_model.model.", 1)[1]
    torch.testing.assert_close(model.get_submodule(m).base_layer.weight,
                               pristine.get_submodule(inner).weight + client.base_deltas[m])


def test_feddpa_keeps_its_personal_adapter(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "feddpa", [2, 2])
    client = FederatedClient(cfg, 0)
    start = client.state
    fit = client.fit(1)
    assert {parse_key(k).adapter for k in fit.upload} == {"global"}
    trained = client.store.load("trained").state
    local_b = [k for k in start if parse_key(k).adapter == "local" and parse_key(k).role == "lora_B"]
    assert local_b and all(trained[k].abs().sum() > 0 for k in local_b)  # the local LoRA trained too
    assert fit.metrics["steps"] == 4  # two phases of max_local_steps=2


def test_evaluation_uses_eval_mode_and_the_clients_own_task(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedsa", [2, 2, 2], lora_dropout=0.5, max_eval_examples=2)
    client = FederatedClient(cfg, 2)
    client.fit(1)
    model = client._ensure_model()
    model.train()
    first, second = client.evaluate(), client.evaluate()
    assert set(first.per_task) == {"upper"} and first.num_examples == 2
    assert [r["prediction"] for r in first.records] == [r["prediction"] for r in second.records]
    assert model.training  # the mode it was in is restored


def test_adapter_state_holds_only_adapter_factors(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2])
    client = FederatedClient(cfg, 0)
    state = adapter_state(client._ensure_model())
    assert roles(state) == {"lora_A", "lora_B"} and len(state) == 2 * 2 * 2
    assert os.path.getsize(client.store.root / "applied.safetensors") < 20_000
