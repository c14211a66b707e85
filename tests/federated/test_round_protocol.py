"""The round loop's protocol on the in-process grid: exact resume after a kill at every phase, every
payload on the wire once (counted from the messages), rejection as a protocol event, lost client
state brought back, partition identity, and start-up with fewer nodes than clients."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from asymlora.federated.client import FederatedClient
from asymlora.federated.engine import LocalEngine
from asymlora.federated.flower.apps import build_client_app
from asymlora.federated.flower.inprocess import InProcessGrid
from asymlora.federated.flower.strategy import PHASES, FederatedStrategy
from asymlora.federated.results import formula_comm
from asymlora.federated.session import ServerState, sample_clients

from .runtime_helpers import tiny_config


class Killed(BaseException):
    """Stands for the process dying: nothing catches it."""


def final_states(cfg):
    out = {}
    for c in range(cfg.n_clients):
        client = FederatedClient(cfg, c)
        out[c] = (client.state, client.base_deltas, client.applied_round)
    server = ServerState.load(cfg.output_dir + "/server", cfg)
    return out, server


def assert_same_run(cfg_a, cfg_b):
    (clients_a, server_a), (clients_b, server_b) = final_states(cfg_a), final_states(cfg_b)
    for c in clients_a:
        (sa, da, ra), (sb, db, rb) = clients_a[c], clients_b[c]
        assert ra == rb and sa.keys() == sb.keys() and da.keys() == db.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (c, k)
        for k in da:
            assert torch.equal(da[k], db[k]), (c, k)
    assert server_a.kept.keys() == server_b.kept.keys()
    for r in server_a.kept:
        for k in server_a.kept[r]:
            assert torch.equal(server_a.kept[r][k], server_b.kept[r][k])
    # the traffic differs: messages in flight when the process died are lost with their counts
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "wire")} for r in h]  # noqa: E731
    for ra, rb in zip(strip(server_a.history), strip(server_b.history)):
        for r in (ra, rb):
            for m in r.get("train", {}).values():
                m.pop("train_seconds", None)
        assert ra == rb


@pytest.mark.parametrize("method,ranks", [("fedalora", [2, 1, 2]), ("flora", [2, 1, 2])])
@pytest.mark.parametrize("phase", PHASES + ("client-train", "client-evaluate"))
def test_a_kill_at_any_phase_resumes_to_the_uninterrupted_run(tmp_path, model_dir, method, ranks, phase):
    kw = dict(rounds=3, eval_every=2, lora_dropout=0.1, fraction=0.67)
    whole = tiny_config(tmp_path / "whole", model_dir, method, ranks, **kw)
    LocalEngine(whole).run()

    cut = tiny_config(tmp_path / "cut", model_dir, method, ranks, **kw)
    second = sample_clients(range(3), cut.fraction, 1, cut.seed, 2)[-1]   # dies after the first has trained

    def server_dies(p, t):
        if p == phase and t == 2:
            raise Killed

    class ClientDies(FederatedClient):
        def fit(self, server_round):
            if phase == "client-train" and server_round == 2 and self.client_id == second:
                raise Killed
            return super().fit(server_round)

        def evaluate(self, *a, **k):
            if phase == "client-evaluate" and self.applied_round == 2 and self.client_id == 1:
                raise Killed
            return super().evaluate(*a, **k)

    with pytest.raises(Killed):
        LocalEngine(cut, on_phase=server_dies, client_factory=ClientDies).run()
    LocalEngine(cut).run()
    assert_same_run(whole, cut)


def test_every_payload_crosses_the_wire_once_and_matches_the_formula(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2, 2], rounds=3, eval_every=2)
    summary = LocalEngine(cfg).run()
    rounds = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    broadcast = sum(v.numel() for v in ServerState.load(tmp_path / "out" / "server", cfg).latest.values())
    upload = broadcast  # Fed-ALoRA: B up, B down
    for r in rounds:
        # round 1's broadcast travels with round 2's train messages, round 2's and 3's with the evaluation
        assert {c: p for c, (p, _) in r["wire"]["download"].items()} == {str(c): broadcast for c in range(3)}
        assert all(p == upload for p, _ in r["wire"]["upload"].values())
        assert set(r["wire"]["upload"]) == {"0", "1", "2"}
    formula = formula_comm(cfg)
    assert summary["params_m_measured"] * 1e6 == pytest.approx(formula["wire_total_params"])


def test_bytes_are_those_of_the_serialised_arrays(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2], rounds=1)
    LocalEngine(cfg).run()
    (r,) = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    for params, nbytes in list(r["wire"]["upload"].values()) + list(r["wire"]["download"].values()):
        n_arrays = 2 * 2 * 2   # A and B of q_proj and v_proj in 2 layers
        assert 4 * params < nbytes < 4 * params + 200 * n_arrays   # float32 payload + a .npy header per array


class PoisonsItself(FederatedClient):
    """Client 1's training diverges in round 1: its whole trained state (private A included) is NaN."""

    def fit(self, server_round):
        fit = super().fit(server_round)
        if self.client_id == 1 and server_round == 1:
            self._trained.state = {k: torch.full_like(v, float("nan")) for k, v in self._trained.state.items()}
            self.store.save("trained", self._trained)
            fit.upload = {k: torch.full_like(v, float("nan")) for k, v in fit.upload.items()}
        return fit


def test_a_rejected_client_goes_on_from_its_last_accepted_state(tmp_path, model_dir, caplog):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2], rounds=3, eval_every=1)
    LocalEngine(cfg, client_factory=PoisonsItself).run()
    rounds = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    assert rounds[0]["accepted"] == [0] and rounds[0]["rejected"][0]["client"] == 1
    assert rounds[1]["accepted"] == [0, 1] and rounds[2]["accepted"] == [0, 1]
    assert "client 1: the server rejected its round 1 update" in caplog.text
    state = FederatedClient(cfg, 1).state
    assert all(torch.isfinite(v).all() for v in state.values())


def test_a_client_that_lost_its_state_is_brought_back(tmp_path, model_dir, caplog):
    """FLoRA: a client whose directory vanished after round 1 gets every stack again and ends with the
    same merged base weights as the others."""
    cfg = tiny_config(tmp_path, model_dir, "flora", [2, 2], rounds=3, eval_every=3)

    def lose(phase, t):
        if phase == "sample" and t == 3:
            shutil.rmtree(cfg.client_state_root / "client-1")

    LocalEngine(cfg, on_phase=lose).run()
    assert "client 1 holds round 0 but had taken in round" in caplog.text
    d0, d1 = FederatedClient(cfg, 0).base_deltas, FederatedClient(cfg, 1).base_deltas
    assert d0.keys() == d1.keys() and d0
    for k in d0:
        torch.testing.assert_close(d0[k], d1[k])


def run_on(cfg, node_configs, factory=FederatedClient):
    grid = InProcessGrid(build_client_app(factory=factory), node_configs, run_config=cfg.to_run_config())
    strategy = FederatedStrategy(cfg)
    strategy.start(grid)
    return strategy


def test_a_second_node_claiming_a_partition_is_refused(tmp_path, model_dir, caplog):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2], rounds=2, eval_every=2)
    strategy = run_on(cfg, [{"partition-id": 0}, {"partition-id": 1}, {"partition-id": 1}])
    assert "node 3 claims partition 1, which node 2 plays: refused" in caplog.text
    r1, r2 = strategy.state.history
    assert r1["accepted"] == [0, 1] and r2["accepted"] == [0, 1]
    assert strategy.nodes == {1: 0, 2: 1}


def test_a_wrong_rank_is_refused(tmp_path, model_dir, caplog):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2], rounds=1, min_clients=1)
    strategy = run_on(cfg, [{"partition-id": 0}, {"partition-id": 1, "rank": 1}])
    assert "node 2 claims partition 1 with rank 1; the run gives it rank 2: refused" in caplog.text
    (r1,) = strategy.state.history
    assert r1["accepted"] == [0]


class Boasts(FederatedClient):
    def fit(self, server_round):
        fit = super().fit(server_round)
        if self.client_id == 1:
            fit.num_examples = 1000
        return fit


def test_more_examples_than_the_partition_holds_is_refused(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2], n_train=[4, 6], rounds=1)
    strategy = run_on(cfg, [{"partition-id": 0}, {"partition-id": 1}], factory=Boasts)
    (r1,) = strategy.state.history
    assert r1["accepted"] == [0]
    assert r1["rejected"] == [{"client": 1, "reason": "claims 1000 examples; its partition holds 6"}]


def test_start_up_waits_for_min_clients_not_every_node(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2, 2], rounds=1, min_clients=2, connect_timeout=1.0)
    strategy = run_on(cfg, [{"partition-id": 0}, {"partition-id": 2}])
    assert strategy.state.history[0]["accepted"] == [0, 2]
    cfg3 = tiny_config(tmp_path / "b", model_dir, "fedit", [2, 2, 2], rounds=1, min_clients=3, connect_timeout=1.0)
    with pytest.raises(TimeoutError, match="only 2 SuperNodes connected within connect_timeout=1s; min_clients is 3"):
        run_on(cfg3, [{"partition-id": 0}, {"partition-id": 2}])


def test_node_keys_refuse_a_node_claiming_another_clients_partition(tmp_path, model_dir, caplog):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pems = []
    for i in range(2):
        key = ec.generate_private_key(ec.SECP384R1())
        ssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        (tmp_path / f"client{i}.pub").write_bytes(ssh)          # the file the operator registered
        pems.append(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2], rounds=1,
                      node_keys={0: str(tmp_path / "client0.pub"), 1: str(tmp_path / "client1.pub")})
    # node 2 holds client 0's key but says it plays client 1
    strategy = run_on(cfg, [{"partition-id": 0, "public-key": pems[0]}, {"partition-id": 1, "public-key": pems[0]}])
    assert "node 2 claims partition 1 but its key belongs to partition 0: refused" in caplog.text
    assert strategy.state.history[0]["accepted"] == [0]


def test_node_keys_are_checked_before_anything_loads(tmp_path):
    from asymlora.federated.config import ConfigError, FederatedConfig

    (tmp_path / "bad.pub").write_text("not a key")
    base = dict(model="m", data_dir="d", output_dir="o", method="fedit", ranks=[2, 2])
    with pytest.raises(ConfigError, match=r"bad.pub: not a public key \(OpenSSH, PEM or DER\)"):
        FederatedConfig(**base, node_keys={0: str(tmp_path / "bad.pub")})
    with pytest.raises(ConfigError, match=r"node_keys: client 1: public key file not found: 'nope.pub'"):
        FederatedConfig(**base, node_keys={1: "nope.pub"})


def test_a_client_that_sat_a_round_out_keeps_the_private_a_it_trained(tmp_path, model_dir):
    """Fed-ALoRA, half the clients per round, evaluation only at the end: a client trained in round 1
    and not in round 2 gets round 2's broadcast with the evaluation; it must build on its accepted
    round-1 training (its own A), not on the state before it."""
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2, 2, 2], rounds=2, eval_every=2, fraction=0.5)
    r1, r2 = (set(sample_clients(range(4), 0.5, 1, cfg.seed, t)) for t in (1, 2))
    sat_out = sorted(r1 - r2)
    assert sat_out, "the seed samples every round-1 client again; pick another"
    trained = {}

    class Keeps(FederatedClient):
        def fit(self, server_round):
            fit = super().fit(server_round)
            trained[(self.client_id, server_round)] = dict(self._trained.state)
            return fit

    LocalEngine(cfg, client_factory=Keeps).run()
    c = sat_out[0]
    final = FederatedClient(cfg, c).state
    a_keys = [k for k in final if ".lora_A." in k]
    assert a_keys
    for k in a_keys:
        assert torch.equal(final[k], trained[(c, 1)][k])
