"""Key spellings from PEFT and from the decomposed layer all parse to (module, factor, adapter)."""

from __future__ import annotations

import pytest
import torch

from asymlora.federated.keys import KeyParts, group_by_module, parse_key, select, with_role

P = "base_model.model.model.layers.3.self_attn.q_proj"


@pytest.mark.parametrize("key, parts", [
    (f"{P}.lora_A.weight", KeyParts(P, "lora_A", None)),
    (f"{P}.lora_B.global.weight", KeyParts(P, "lora_B", "global")),
    (f"{P}.declora_B1.default", KeyParts(P, "declora_B1", "default")),
    (f"{P}.declora_A", KeyParts(P, "declora_A", None)),
    (f"{P}.declora_A0", KeyParts(P, "declora_A0", None)),
    (f"{P}.declora_A2.default.weight", KeyParts(P, "declora_A2", "default")),
    (f"{P}.base_layer.weight", None),
    ("lm_head.weight", None),
])
def test_parse_key(key, parts):
    assert parse_key(key) == parts


def test_with_role_keeps_the_spelling():
    assert with_role(f"{P}.declora_B2.default", "declora_B0") == f"{P}.declora_B0.default"
    assert with_role(f"{P}.declora_B1", "declora_B0") == f"{P}.declora_B0"
    with pytest.raises(KeyError, match="not an adapter key"):
        with_role("lm_head.weight", "declora_B0")


def test_select_and_group():
    state = {f"{P}.lora_A.global.weight": torch.ones(1), f"{P}.lora_A.local.weight": torch.ones(1),
             f"{P}.lora_B.global.weight": torch.ones(1), "x.bias": torch.ones(1)}
    assert set(select(state, ["lora_A"])) == {f"{P}.lora_A.global.weight", f"{P}.lora_A.local.weight"}
    assert set(select(state, ["lora_A", "lora_B"], adapter="global")) == {
        f"{P}.lora_A.global.weight", f"{P}.lora_B.global.weight"}
    with pytest.raises(KeyError, match="has lora_A twice"):
        group_by_module(select(state, ["lora_A"]))
