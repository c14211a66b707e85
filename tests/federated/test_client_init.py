"""`client_init`: every client starts from one initial adapter (shared, the default), cut to its rank
from one draw at the run's largest rank, or each draws its own (own, the recorded CPU runs). Checked
on the clients' states, on the server's first average, and on the fingerprints that let old runs
resume."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from asymlora.federated import client as client_module
from asymlora.federated.client import ClientStateError, FederatedClient, rank_prefix
from asymlora.federated.config import ConfigError, FederatedConfig
from asymlora.federated.engine import LocalEngine
from asymlora.federated.keys import parse_key
from asymlora.federated.local_training import TrainStats
from asymlora.federated.session import ServerState

from .runtime_helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]
BASE = dict(model="m", data_dir="d", method="fedit", output_dir="o")


def by_role(state, role):
    return {k: v for k, v in state.items() if parse_key(k).role == role}


def equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- one rank -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["fedit", "fedsa", "fedalora", "feddpa"])
def test_shared_gives_every_client_the_same_initial_adapter(tmp_path, model_dir, method):
    cfg = tiny_config(tmp_path, model_dir, method, [2, 2, 2])
    assert cfg.client_init == "shared"                                   # the default
    states = [FederatedClient(cfg, c).state for c in range(3)]
    assert all(equal_states(states[0], s) for s in states[1:])
    a = by_role(states[0], "lora_A")
    assert a and all(v.abs().sum() > 0 for v in a.values())              # a real draw...
    assert all(not v.any() for v in by_role(states[0], "lora_B").values())  # ...and B = 0
    if method == "feddpa":                                               # both LoRAs, as the authors' copy
        assert {parse_key(k).adapter for k in a} == {"global", "local"}
    reseeded = tiny_config(tmp_path / "seed1", model_dir, method, [2, 2, 2], seed=1)
    assert not equal_states(FederatedClient(reseeded, 0).state, states[0])  # the draw follows the run's seed


def test_own_gives_each_client_its_own_reproducible_draw(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2], client_init="own")
    a0 = by_role(FederatedClient(cfg, 0).state, "lora_A")
    a1 = by_role(FederatedClient(cfg, 1).state, "lora_A")
    assert all(not torch.equal(a0[k], a1[k]) for k in a0)
    again = tiny_config(tmp_path / "again", model_dir, "fedalora", [2, 2], client_init="own")
    assert equal_states(a0, by_role(FederatedClient(again, 0).state, "lora_A"))   # reproducible from the seed
    shared = tiny_config(tmp_path / "shared", model_dir, "fedalora", [2, 2])
    s0 = by_role(FederatedClient(shared, 0).state, "lora_A")
    assert all(not torch.equal(a0[k], s0[k]) and not torch.equal(a1[k], s0[k]) for k in a0)


# ---- different ranks: prefixes of one draw at the largest rank -----------------------------------
ROWS, COLS, COLS_SCALED, WHOLE = "rows", "cols", "cols scaled", "whole"
CUT = {
    "zeropadding": {"lora_A": ROWS, "lora_B": COLS},
    "flora": {"lora_A": ROWS, "lora_B": COLS},
    # B side: A r x d_in, M d_m x r (fan-in r), B1 r x d_m, B2 d_out x r (zero), B0 d_out x d_m
    "fedalora": {"declora_A": ROWS, "declora_M": COLS_SCALED, "declora_B1": ROWS, "declora_B2": COLS,
                 "declora_B0": WHOLE},
    # A side: B d_out x r (fan-in r), M r x d_m, A1 d_m x r (fan-in r), A2 r x d_in (zero), A0 d_m x d_in
    "fedsa": {"declora_B": COLS_SCALED, "declora_M": ROWS, "declora_A1": COLS_SCALED, "declora_A2": ROWS,
              "declora_A0": WHOLE},
}


@pytest.mark.parametrize("method", sorted(CUT))
def test_shared_with_different_ranks_cuts_one_draw_at_the_largest_rank(tmp_path, model_dir, method):
    cfg = tiny_config(tmp_path, model_dir, method, [4, 1, 2])
    big, small, mid = (FederatedClient(cfg, c).state for c in range(3))
    assert {parse_key(k).role for k in big} == set(CUT[method])
    for state, r in ((small, 1), (mid, 2)):
        assert state.keys() == big.keys()
        for k, v in state.items():
            how, ref = CUT[method][parse_key(k).role], big[k]
            if how == ROWS:
                expected = ref[:r]
            elif how == COLS:
                expected = ref[:, :r]
            elif how == COLS_SCALED:   # the spread of a rank-r draw: uniform in +-1/sqrt(r), not 1/sqrt(4)
                expected = ref[:, :r] * math.sqrt(4 / r)
                assert v.abs().max() <= 1 / math.sqrt(r) + 1e-6
            else:
                expected = ref
            torch.testing.assert_close(v, expected, rtol=1e-6, atol=0, msg=f"{k} (rank {r}, {how})")
    own = tiny_config(tmp_path / "own", model_dir, method, [4, 1, 2], client_init="own")
    big_own, small_own = FederatedClient(own, 0).state, FederatedClient(own, 1).state
    first = {"zeropadding": "lora_A", "flora": "lora_A", "fedalora": "declora_A", "fedsa": "declora_M"}[method]
    assert all(not torch.equal(small_own[k], big_own[k][:1]) for k in by_role(big_own, first))


def test_a_node_rank_above_the_runs_largest_is_refused_under_shared(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 1])
    with pytest.raises(ValueError, match=r"client 1: client_init shared .* largest rank 2, but this client has "
                                         r"rank 3; .* or set client_init: own"):
        FederatedClient(cfg, 1, rank=3)
    own = tiny_config(tmp_path / "own", model_dir, "fedalora", [2, 1], client_init="own")
    assert FederatedClient(own, 1, rank=3).rank == 3


def test_rank_prefix():
    ref = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(rank_prefix(ref, (2, 4)), ref[:2])                      # rows: as drawn
    torch.testing.assert_close(rank_prefix(ref, (3, 1)), ref[:, :1] * 2.0)     # fan-in 4 -> 1: x sqrt(4)
    assert torch.equal(rank_prefix(ref, (3, 4)), ref) and rank_prefix(ref, (3, 4)) is not ref
    with pytest.raises(ValueError, match=r"'x.lora_A': the client's factor \(4, 4\) is larger than the shared "
                                         r"draw \(3, 4\) along axis 0"):
        rank_prefix(ref, (4, 4), "x.lora_A")
    with pytest.raises(ValueError, match=r"shared draw has shape \(3, 4\), the client's factor \(12,\)"):
        rank_prefix(ref, (12,))


# ---- what the server averages -------------------------------------------------------------------
def first_round_average(tmp_path, model_dir, client_init, monkeypatch):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2], n_train=[4, 4], rounds=1, client_init=client_init)
    # a round in which nothing trains: the server's average of the untouched initial adapters
    monkeypatch.setattr(client_module, "local_train", lambda *args, **kwargs: TrainStats(0, 0.0, 0.0))
    initial = [by_role(FederatedClient(cfg, c).state, "lora_A") for c in range(2)]
    LocalEngine(cfg).run()
    state = ServerState.load(tmp_path / "out" / "server", cfg)
    assert state.round == 1 and state.history[0]["accepted"] == [0, 1]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["summary"]["client_init"] == client_init
    assert f"(client_init: {client_init})" in (tmp_path / "out" / "results.md").read_text()
    return initial, state.latest


def test_a_round_without_learning_brings_back_the_common_initial_a(tmp_path, model_dir, monkeypatch):
    initial, latest = first_round_average(tmp_path, model_dir, "shared", monkeypatch)
    assert equal_states(initial[0], initial[1])
    assert equal_states(by_role(latest, "lora_A"), initial[0])                 # exactly the broadcast start
    assert all(not v.any() for v in by_role(latest, "lora_B").values())


def test_with_own_draws_the_same_round_averages_unrelated_a_and_shrinks_it(tmp_path, model_dir, monkeypatch):
    initial, latest = first_round_average(tmp_path, model_dir, "own", monkeypatch)
    a = by_role(latest, "lora_A")
    for k, v in a.items():
        torch.testing.assert_close(v, 0.5 * (initial[0][k] + initial[1][k]), rtol=0, atol=0)
        assert v.norm() < 0.85 * min(initial[0][k].norm(), initial[1][k].norm())   # ~1/sqrt(2) of either


# ---- the config key, and old runs ---------------------------------------------------------------
def test_the_key_is_checked():
    assert FederatedConfig(**BASE).client_init == "shared"
    with pytest.raises(ConfigError, match="client_init: expected one of shared, own, got 'common'"):
        FederatedConfig(**BASE, client_init="common")
    with pytest.raises(ConfigError, match=r"run\.yaml: client_init: expected str, got int 1"):
        FederatedConfig.from_dict({**BASE, "client_init": 1}, source="run.yaml")
    cfg = FederatedConfig(**BASE, client_init="own")
    assert FederatedConfig.from_run_config(cfg.to_run_config()) == cfg


def test_the_fingerprint_follows_client_init_and_the_hint_names_the_value_to_set():
    own = FederatedConfig(**BASE, ranks=[4, 4], client_init="own")
    shared = FederatedConfig(**BASE, ranks=[4, 4])
    assert shared.fingerprint() != own.fingerprint()
    assert shared.resume_hint(own.fingerprint()).endswith("set client_init: own to resume it")
    assert "set client_init: shared" in own.resume_hint(shared.fingerprint())
    assert shared.resume_hint(FederatedConfig(**BASE, ranks=[2, 2]).fingerprint()) == ""


def test_recorded_cpu_configs_use_one_initialisation_the_default_shared():
    import yaml

    paths = sorted((ROOT / "experiments" / "federated" / "cpu").glob("*.yaml"))
    assert len(paths) >= 9
    for path in paths:
        assert "client_init" not in yaml.safe_load(path.read_text()), path.name
        assert FederatedConfig.from_yaml(path).client_init == "shared", path.name


def test_an_own_run_is_not_resumed_as_shared_and_the_error_says_what_to_set(tmp_path, model_dir):
    own = tiny_config(tmp_path, model_dir, "fedit", [2, 2], rounds=1, client_init="own")
    LocalEngine(own).run()
    shared = dataclasses.replace(own, client_init="shared")
    with pytest.raises(ClientStateError, match=r"server_state\.safetensors was written by a run with another "
                                               r"configuration .*started with client_init: own, this config says "
                                               r"shared: set "
                                               r"client_init: own to resume it"):
        ServerState.load(tmp_path / "out" / "server", shared)
    with pytest.raises(ClientStateError, match=r"applied\.safetensors belongs to another run .*set client_init: own"):
        FederatedClient(shared, 0)
    other = dataclasses.replace(own, method="fedsa")
    with pytest.raises(ClientStateError, match="another run") as err:
        FederatedClient(other, 0)
    assert "client_init" not in str(err.value)                           # no hint where it would not help
    assert ServerState.load(tmp_path / "out" / "server", own).round == 1
