"""Whole runs through the in-process engine on a tiny real Llama: the aggregation it performs,
what reaches the server, heterogeneous ranks, partial participation, faults, resume, and the
traffic it measures against the formula of `comm`."""

from __future__ import annotations

import json

import pytest
import torch

from asymlora.federated.client import FederatedClient
from asymlora.federated.engine import LocalEngine
from asymlora.federated.flower.strategy import RoundFailedError
from asymlora.federated.keys import parse_key
from asymlora.federated.results import formula_comm
from asymlora.federated.session import CHECKPOINT, ServerState

from .runtime_helpers import tiny_config


class Recording(FederatedClient):
    """Records every upload it hands to the server."""

    sent: list = []

    def fit(self, server_round):
        fit = super().fit(server_round)
        Recording.sent.append((self.client_id, server_round, fit))
        return fit


class FakeClock:
    """The in-process grid's clock, so that "late" does not depend on how busy the machine is."""

    now = 0.0

    def perf_counter(self):
        return self.now


CLOCK = FakeClock()


class Faulty(FederatedClient):
    """Client 1 crashes in round 1; client 2 sends NaN in round 1; client 3 is slow in round 2."""

    def fit(self, server_round):
        if self.client_id == 1 and server_round == 1:
            raise RuntimeError("CUDA error: out of memory")
        fit = super().fit(server_round)
        if self.client_id == 2 and server_round == 1:
            key = next(iter(fit.upload))
            fit.upload[key] = fit.upload[key].clone()
            fit.upload[key].view(-1)[0] = float("nan")
        if self.client_id == 3 and server_round == 2:
            CLOCK.now += 1000.0   # replies 1000 s late on the grid's clock
        return fit


def roles(tensors):
    return {parse_key(k).role for k in tensors}


@pytest.fixture(autouse=True)
def _reset_recording():
    Recording.sent = []


def test_fedit_aggregates_the_example_weighted_mean(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2], n_train=[6, 2], rounds=1)
    LocalEngine(cfg, client_factory=Recording).run()
    ups = {cid: fit for cid, _, fit in Recording.sent}
    state = ServerState.load(tmp_path / "out" / "server", cfg)
    assert set(state.latest) == set(ups[0].upload)
    for k, v in state.latest.items():
        torch.testing.assert_close(v, 0.75 * ups[0].upload[k] + 0.25 * ups[1].upload[k])  # 6 vs 2 examples
    for cid in (0, 1):   # every client now holds the average
        held = FederatedClient(cfg, cid).state
        assert all(torch.equal(held[k], state.latest[k]) for k in state.latest)


def test_fedalora_server_never_sees_a(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2, 2])
    LocalEngine(cfg, client_factory=Recording).run()
    uploads = [fit.upload for _, _, fit in Recording.sent]
    state = ServerState.load(tmp_path / "out" / "server", cfg)
    assert len(uploads) == 6 and all(roles(u) == {"lora_B"} for u in uploads)
    assert roles(state.latest) == {"lora_B"}
    from safetensors import safe_open
    with safe_open(str(tmp_path / "out" / "server" / CHECKPOINT), "pt") as f:
        assert not [k for k in f.keys() if "lora_A" in k]           # nor does its checkpoint hold any
    a = [{k: v for k, v in FederatedClient(cfg, c).state.items() if "lora_A" in k} for c in range(3)]
    assert all(not torch.equal(a[0][k], a[1][k]) for k in a[0])     # each client's A stays its own


def test_heterogeneous_ranks_in_one_fedalora_run(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [4, 2, 1])
    summary = LocalEngine(cfg, client_factory=Recording).run()
    assert summary["heterogeneous"] and summary["rounds_completed"] == 2
    assert all(roles(fit.upload) == {"declora_B1", "declora_B2"} for _, _, fit in Recording.sent)
    states = [FederatedClient(cfg, c).state for c in range(3)]
    b0 = [k for k in states[0] if k.endswith("declora_B0.default")]
    for s, r in zip(states, [4, 2, 1]):
        assert all(v.shape[0] == r for k, v in s.items() if parse_key(k).role == "declora_A")
        for k in b0:
            torch.testing.assert_close(s[k], states[0][k])            # one shared accumulator
    assert any(states[0][k].abs().sum() > 0 for k in b0)
    assert summary["params_m_measured"] == pytest.approx(summary["params_m_formula"], rel=0, abs=1e-12)


@pytest.mark.parametrize("method,ranks", [("feddpa", [2, 2]), ("zeropadding", [4, 1]), ("fedsa", [4, 1])])
def test_measured_traffic_equals_the_formula(tmp_path, model_dir, method, ranks):
    cfg = tiny_config(tmp_path, model_dir, method, ranks, rounds=1, max_local_steps=1)
    summary = LocalEngine(cfg).run()
    formula = formula_comm(cfg)
    record = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"][0]
    assert record["comm"]["total_params"] == formula["wire_total_params"]
    assert record["comm"]["upload_params"] == formula["upload_params"]
    assert record["comm"]["download_params"] == formula["download_params"]
    if method == "feddpa":   # the paper counts FedDPA twice; the table shows both
        assert summary["params_m_paper_convention"] == pytest.approx(2 * summary["params_m_measured"])
        # evaluated with instance-wise weights (the default), recorded per client
        for c in summary["clients"].values():
            assert 0.0 <= c["feddpa_local_weight_min"] <= c["feddpa_local_weight_mean"] <= c["feddpa_local_weight_max"] <= 1.0
        assert "FedDPA, instance-wise weighting" in (tmp_path / "out" / "results.md").read_text()


def test_crash_nan_and_timeout_are_rejected_and_the_round_goes_on(tmp_path, model_dir, caplog, monkeypatch):
    from asymlora.federated.flower import inprocess

    monkeypatch.setattr(inprocess, "time", CLOCK)
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2, 2, 2], client_timeout=2.5, eval_every=2)
    summary = LocalEngine(cfg, client_factory=Faulty).run()
    r1, r2 = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    assert r1["accepted"] == [0, 3] and r2["accepted"] == [0, 1, 2]
    reasons = {r["client"]: r["reason"] for r in r1["rejected"]}
    assert reasons[1] == "crashed: RuntimeError: CUDA error: out of memory"
    assert "has 1 NaN and 0 Inf values" in reasons[2]
    assert r2["rejected"][0]["client"] == 3 and r2["rejected"][0]["reason"] == "timed out: no reply within 2.5s"
    assert "rejected the update of client 2" in caplog.text
    state = ServerState.load(tmp_path / "out" / "server", cfg)
    assert all(torch.isfinite(v).all() for v in state.latest.values())
    assert set(summary["clients"]) == {"0", "1", "2", "3"}          # everyone still evaluated
    md = (tmp_path / "out" / "results.md").read_text()
    assert "c1: crashed: RuntimeError" in md


def test_too_few_valid_updates_stop_the_run_and_a_rerun_goes_on(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2], min_clients=2, eval_every=2)
    with pytest.raises(RoundFailedError, match=r"round 1: 1 valid update\(s\) of 2 sampled client\(s\), min_clients "
                                               r"is 2; rejected: client 1: crashed: RuntimeError: CUDA error"):
        LocalEngine(cfg, client_factory=Faulty).run()
    (r1,) = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    assert r1["accepted"] == [] and r1["comm"] is None and not r1.get("eval")   # nothing scored
    assert ServerState.load(tmp_path / "out" / "server", cfg).payload_round == 0
    LocalEngine(cfg, client_factory=Faulty).run()                               # round 2 goes through
    r1, r2 = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    assert r2["failed"] is None and r2["accepted"] == [0, 1]
    assert ServerState.load(tmp_path / "out" / "server", cfg).payload_round == 2


def test_partial_participation_is_seeded_and_everyone_keeps_up(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 1, 2, 1], fraction=0.5, rounds=3, eval_every=3,
                      max_local_steps=1)
    LocalEngine(cfg).run()
    rounds = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    picked = [r["participants"] for r in rounds]
    assert all(len(p) == 2 for p in picked) and len({tuple(p) for p in picked}) > 1
    from asymlora.federated.session import sample_clients
    assert picked == [sample_clients(range(4), 0.5, 1, cfg.seed, t) for t in (1, 2, 3)]
    states = [FederatedClient(cfg, c).state for c in range(4)]
    total = ServerState.load(tmp_path / "out" / "server", cfg).latest
    for s in states:   # clients that sat rounds out hold the same accumulator as the others
        for k, v in total.items():
            torch.testing.assert_close(s[k], v)


class KilledInRound2(FederatedClient):
    def fit(self, server_round):
        if self.client_id == 1 and server_round == 2:
            raise KeyboardInterrupt  # the process dies after client 0 has trained round 2
        return super().fit(server_round)


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, model_dir):
    whole = tiny_config(tmp_path / "whole", model_dir, "fedalora", [2, 1], rounds=3, eval_every=3,
                        lora_dropout=0.1)
    LocalEngine(whole).run()
    cut = tiny_config(tmp_path / "cut", model_dir, "fedalora", [2, 1], rounds=3, eval_every=3, lora_dropout=0.1)
    with pytest.raises(KeyboardInterrupt):
        LocalEngine(cut, client_factory=KilledInRound2).run()
    assert ServerState.load(tmp_path / "cut" / "out" / "server", cut).round == 1
    assert (tmp_path / "cut" / "out" / "clients" / "client-0" / "trained.safetensors").exists()
    LocalEngine(cut).run()                                            # resumes at round 2
    a = json.loads((tmp_path / "whole" / "out" / "results.json").read_text())["rounds"]
    b = json.loads((tmp_path / "cut" / "out" / "results.json").read_text())["rounds"]
    assert [r["round"] for r in b] == [1, 2, 3]
    loss = lambda rounds: [{c: m["train_loss"] for c, m in r["train"].items()} for r in rounds]  # noqa: E731
    for la, lb in zip(loss(a), loss(b)):
        assert la.keys() == lb.keys() and all(lb[c] == pytest.approx(la[c], abs=1e-6) for c in la)
    for c in range(2):
        sa, sb = FederatedClient(whole, c).state, FederatedClient(cut, c).state
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7)


def test_results_files(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "zeropadding", [2, 1], rounds=2)
    LocalEngine(cfg).run()
    out = tmp_path / "out"
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["method"] == "zeropadding" and len(data["rounds"]) == 2
    assert set(data["summary"]["clients"]) == {"0", "1"}
    assert (out / "clients" / "client-1" / "predictions-round2.jsonl").exists()
    md = (out / "results.md").read_text()
    assert "| Method | c0 reverse | c1 add | Avg. | Params.(M) sent | Params.(M) formula |" in md
    # a finished run asked to run again does nothing but report
    assert LocalEngine(cfg).run()["rounds_completed"] == 2


def test_the_local_engine_runs_without_ray(tmp_path, model_dir):
    """Flower's message layer runs in process; Ray (the simulation's backend) is never imported."""
    import subprocess
    import sys

    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2], rounds=1)
    code = ("import json, sys; sys.modules['ray'] = None\n"
            "from asymlora.federated.config import FederatedConfig\n"
            "from asymlora.federated.engine import LocalEngine\n"
            f"LocalEngine(FederatedConfig.from_dict(json.loads({json.dumps(json.dumps(cfg.to_dict()))}))).run()\n"
            "print('ray' in sys.modules and sys.modules['ray'] is not None)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_the_python_api_names_a_missing_data_file_before_a_model_loads(tmp_path, model_dir):
    from asymlora.federated.config import ConfigError

    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2])
    (tmp_path / "data" / "local_training_1.json").unlink()
    loaded = []
    with pytest.raises(ConfigError, match=r"data_dir: .* lacks local_training_1\.json"):
        LocalEngine(cfg, client_factory=lambda *a, **k: loaded.append(a) or FederatedClient(*a, **k)).run()
    assert not loaded and not (tmp_path / "out" / "server").exists()
