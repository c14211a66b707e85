"""Several rounds of a method on real adapter state dicts, with stand-in local training: what
crosses the wire, what every client ends up holding, heterogeneous ranks in one run."""

from __future__ import annotations

import torch

from asymlora.federated.algorithms import (
    FedALoRA, FedALoRAHet, FedSALoRAHet, FederatedMethod, ZeroPadding, effective_delta,
)
from asymlora.federated.keys import parse_key
from asymlora.federated.server import server_round
from asymlora.federated.validation import ClientUpdate

from .fedhelpers import decomposed_model, lora_state


def initial_decomposed(rank, dm, side, seed):
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(decomposed_model(rank, dm, side, seed)).items()}


def fake_train(method: FederatedMethod, state, g):
    """Stand-in for local training: every trainable factor moves, nothing else does."""
    trainable = set(method.trainable_keys(state))
    return {k: (v + 0.1 * torch.randn(v.shape, generator=g) if k in trainable else v) for k, v in state.items()}


def run(method, states, num_examples, rounds=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    messages, history = [], []
    for t in range(1, rounds + 1):
        states = [method.round_start(s, t, g) for s in states]
        states = [fake_train(method, s, g) for s in states]
        updates = [ClientUpdate(f"c{i}", method.client_upload(s), n) for i, (s, n) in enumerate(zip(states, num_examples))]
        result = server_round(method, updates, min_clients=len(states))
        messages += [u.tensors for u in updates] + [result.broadcast]
        states = [method.client_apply(s, result.broadcast) for s in states]
        history.append((result, states))
    return states, messages, history


def roles_in(messages):
    return {parse_key(k).role for msg in messages for k in msg}


def test_fedalora_server_never_sees_a_and_clients_keep_training_a():
    start = [lora_state(2, seed=s, fill_b=False) for s in range(3)]
    states, messages, _ = run(FedALoRA(), start, [30, 10, 60])
    assert roles_in(messages) == {"lora_B"}
    a_keys = [k for k in start[0] if "lora_A" in k]
    for k in a_keys:
        assert not torch.equal(states[0][k], start[0][k])          # local A training is kept
        assert not torch.equal(states[0][k], states[1][k])         # and stays personal
    b_keys = [k for k in start[0] if "lora_B" in k]
    for k in b_keys:
        assert torch.equal(states[0][k], states[2][k])             # everyone holds the broadcast B


def test_fedalora_heterogeneous_ranks_in_one_run():
    ranks, dm = [4, 4, 2, 1], 3
    start = [initial_decomposed(r, dm, "B", seed=i) for i, r in enumerate(ranks)]
    method = FedALoRAHet()
    states, messages, history = run(method, start, [10, 20, 30, 40])
    assert roles_in(messages) == {"declora_B1", "declora_B2", "declora_B0"}
    b0 = [k for k in states[0] if k.endswith("declora_B0")]
    total = {k: sum(res.broadcast[k] for res, _ in history) for k in b0}
    for s, r in zip(states, ranks):
        for k in b0:
            torch.testing.assert_close(s[k], total[k])             # B0 = the sum of every broadcast
        a = next(k for k in s if k.endswith("declora_A"))
        assert s[a].shape[0] == r
    # continuity across every round boundary: dW after apply == dW after the next round start
    g = torch.Generator().manual_seed(5)
    for _, sts in history:
        for s in sts:
            nxt = method.round_start(s, 2, g)
            for mod in {parse_key(k).module for k in s}:
                torch.testing.assert_close(effective_delta(nxt, mod), effective_delta(s, mod))


def test_fedsa_heterogeneous_sends_only_the_a_side():
    start = [initial_decomposed(r, 2, "A", seed=i) for i, r in enumerate([3, 1])]
    states, messages, _ = run(FedSALoRAHet(), start, [5, 5], rounds=2)
    assert roles_in(messages) == {"declora_A1", "declora_A2", "declora_A0"}
    a0 = [k for k in states[0] if k.endswith("declora_A0")]
    assert all(torch.equal(states[0][k], states[1][k]) for k in a0)
    b = [k for k in states[0] if k.endswith("declora_B")]
    assert all(states[0][k].shape[1] == 3 and states[1][k].shape[1] == 1 for k in b)


def test_zeropadding_heterogeneous_ranks_in_one_run():
    ranks = [4, 2, 1]
    start = [lora_state(r, seed=i) for i, r in enumerate(ranks)]
    states, _, history = run(ZeroPadding(), start, [1, 1, 2])
    last = history[-1][0].broadcast
    for s, r in zip(states, ranks):
        for k, v in s.items():
            axis = 0 if "lora_A" in k else 1
            assert v.shape[axis] == r
            torch.testing.assert_close(v, last[k].narrow(axis, 0, r))
