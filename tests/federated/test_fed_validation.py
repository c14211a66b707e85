"""Server-side rejection of bad updates, and rounds that go on with the survivors."""

from __future__ import annotations

import logging

import pytest
import torch

from asymlora.federated.algorithms import FedALoRA, FedALoRAHet, FedIT, ZeroPadding
from asymlora.federated.server import server_round
from asymlora.federated.validation import ClientUpdate, NotEnoughClientsError, validate_updates

M = "m.layers.0.q_proj"
A, B = f"{M}.lora_A.weight", f"{M}.lora_B.weight"


def upd(cid, n=10, **tensors):
    return ClientUpdate(cid, tensors, n)


def b_only(value, rank=2, d_out=3):
    return {B: torch.full((d_out, rank), float(value))}


def test_nan_and_inf_rejected_round_goes_on(caplog):
    bad_nan = b_only(1.0)
    bad_nan[B][0, 0] = float("nan")
    bad_inf = b_only(1.0)
    bad_inf[B][1, 1] = float("inf")
    updates = [ClientUpdate("c0", b_only(1.0), 10), ClientUpdate("c1", bad_nan, 10),
               ClientUpdate("c2", b_only(4.0), 30), ClientUpdate("c3", bad_inf, 10)]
    with caplog.at_level(logging.WARNING, logger="asymlora.federated"):
        result = server_round(FedALoRA(), updates, min_clients=2)
    assert result.accepted == ["c0", "c2"]
    assert [r.client_id for r in result.rejected] == ["c1", "c3"]
    assert f"{B!r} has 1 NaN and 0 Inf values" in result.rejected[0].reason
    assert "0 NaN and 1 Inf" in result.rejected[1].reason
    # only the survivors are averaged: 1/4 * 1 + 3/4 * 4
    torch.testing.assert_close(result.broadcast[B], torch.full((3, 2), 3.25))
    assert "rejected the update of client c1" in caplog.text and "NaN" in caplog.text


def test_wrong_shape_against_expected():
    expected = FedALoRA().upload_pattern(b_only(0.0))
    updates = [upd("ok", **{B: torch.ones(3, 2)}), upd("wide", **{B: torch.ones(3, 4)})]
    res = validate_updates(FedALoRA(), updates, expected=expected)
    assert res.accepted[0].client_id == "ok"
    assert res.rejected[0].client_id == "wide"
    assert res.rejected[0].reason == f"{B!r} has shape (3, 4), expected (3, 2)"


def test_majority_shape_is_the_reference_without_expected():
    updates = [upd("a", **b_only(1)), upd("b", **b_only(1, rank=5)), upd("c", **b_only(2))]
    res = validate_updates(FedALoRA(), updates)
    assert [u.client_id for u in res.accepted] == ["a", "c"]
    assert "has shape (3, 5), expected (3, 2)" in res.rejected[0].reason


def test_unexpected_and_missing_keys():
    expected = {B: (3, 2), "m.layers.1.q_proj.lora_B.weight": (3, 2)}
    with_a = {**b_only(1), A: torch.ones(2, 4), "m.layers.1.q_proj.lora_B.weight": torch.ones(3, 2)}
    res = validate_updates(FedALoRA(), [upd("leaky", **with_a), upd("short", **b_only(1))], expected=expected,
                           min_clients=0)
    reasons = {r.client_id: r.reason for r in res.rejected}
    assert f"unexpected key {A!r} (fedalora uploads only lora_B)" in reasons["leaky"]
    assert "missing keys 'm.layers.1.q_proj.lora_B.weight'" in reasons["short"]
    junk = validate_updates(FedIT(), [upd("x", **{"m.foo.bias": torch.ones(2)})], min_clients=0)
    assert "unexpected key 'm.foo.bias'" in junk.rejected[0].reason


def test_inconsistent_ranks_and_counts():
    bad_pair = {A: torch.ones(2, 4), B: torch.ones(3, 5)}
    res = validate_updates(ZeroPadding(), [upd("p", **bad_pair), upd("n", n=0, **{A: torch.ones(2, 4),
                                                                               B: torch.ones(3, 2)})],
                           min_clients=0)
    reasons = {r.client_id: r.reason for r in res.rejected}
    assert reasons["p"] == f"module {M!r}: lora_A has rank 2 but lora_B has rank 5"
    assert reasons["n"] == "num_examples must be a positive integer, got 0"
    het = {f"{M}.declora_B1": torch.ones(2, 3), f"{M}.declora_B2": torch.ones(4, 1)}
    res = validate_updates(FedALoRAHet(), [upd("h", **het)], min_clients=0)
    assert "declora_B2 has rank 1 but declora_B1 has rank 2" in res.rejected[0].reason
    lonely = {f"{M}.declora_B1": torch.ones(2, 3)}
    res = validate_updates(FedALoRAHet(), [upd("l", **lonely)], min_clients=0)
    assert "without declora_B2" in res.rejected[0].reason
    ints = validate_updates(FedALoRA(), [upd("i", **{B: torch.ones(3, 2, dtype=torch.int64)})], min_clients=0)
    assert "expected a floating-point tensor" in ints.rejected[0].reason


def test_heterogeneous_pattern_frees_only_the_rank():
    m = FedALoRAHet()
    template = {f"{M}.declora_B1": torch.ones(8, 4), f"{M}.declora_B2": torch.ones(6, 8)}   # r 8, d_m 4
    expected = m.upload_pattern(template)
    assert expected == {f"{M}.declora_B1": (None, 4), f"{M}.declora_B2": (6, None)}
    small = {f"{M}.declora_B1": torch.ones(2, 4), f"{M}.declora_B2": torch.ones(6, 2)}
    other_dm = {f"{M}.declora_B1": torch.ones(2, 5), f"{M}.declora_B2": torch.ones(6, 2)}
    res = validate_updates(m, [upd("r2", **small), upd("dm5", **other_dm)], expected=expected)
    assert [u.client_id for u in res.accepted] == ["r2"]
    assert "declora_B1' has shape (2, 5), expected (r, 4)" in res.rejected[0].reason


def test_too_few_survivors_is_a_clear_error():
    nan = b_only(1.0)
    nan[B][0, 0] = float("nan")
    with pytest.raises(NotEnoughClientsError, match=r"only 1 of 2 updates are valid, min_clients is 2 "
                                                    r"\(client bad: .*NaN") as exc:
        server_round(FedALoRA(), [upd("good", **b_only(1.0)), ClientUpdate("bad", nan, 5)], min_clients=2)
    assert exc.value.rejected[0].client_id == "bad"
