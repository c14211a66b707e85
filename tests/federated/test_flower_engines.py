"""The same apps on Flower's two real engines, tiny model, 2 rounds: the simulation engine (Ray,
with a crashing client and a NaN update injected by ClientApp mods), and the deployment engine on
loopback (a SuperLink and two SuperNodes started and stopped by this test, by PID, `flwr run`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .runtime_helpers import free_port, stop, tiny_config, wait_for_port

pytest.importorskip("flwr")


def test_simulation_engine_with_a_crash_and_a_nan_update(tmp_path, model_dir):
    pytest.importorskip("ray")
    from asymlora.federated.flower.launch import run_simulation_engine

    log_path = tmp_path / "uploads.jsonl"

    def faults(msg, ctx, call_next):
        import json as _json

        import numpy as _np
        from flwr.app import Array as _Array

        pid, kind = int(ctx.node_config["partition-id"]), msg.metadata.message_type
        rnd = int(msg.content["config"]["server-round"])
        if kind == "train" and pid == 1 and rnd == 1:
            raise RuntimeError("simulated crash")
        reply = call_next(msg, ctx)
        if kind == "train":
            arrays = reply.content["arrays"]
            with open(log_path, "a") as f:
                f.write(_json.dumps({"client": pid, "round": rnd, "keys": sorted(arrays)}) + "\n")
            if pid == 0 and rnd == 2:
                key = sorted(arrays)[0]
                nd = arrays[key].numpy().copy()
                nd.flat[0] = _np.nan
                arrays[key] = _Array(nd)
        return reply

    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 1], max_local_steps=1, eval_every=2)
    run_simulation_engine(cfg, num_cpus_per_client=2.0, client_mods=[faults])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    r1, r2 = results["rounds"]
    assert r1["accepted"] == [0] and r1["rejected"][0]["client"] == 1
    assert "simulated crash" in r1["rejected"][0]["reason"]
    assert r2["accepted"] == [1] and r2["rejected"][0]["client"] == 0
    assert "NaN" in r2["rejected"][0]["reason"]
    assert set(results["summary"]["clients"]) == {"0", "1"}
    sent = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert {(s["client"], s["round"]) for s in sent} == {(0, 1), (0, 2), (1, 2)}
    assert all(k.split(".")[-2] in ("declora_B1", "declora_B2") for s in sent for k in s["keys"])


def deploy(tmp_path, cfg, n_nodes, expect_code=0):
    """A SuperLink and `n_nodes` SuperNodes on loopback, the run submitted with `flwr run`; its
    results (None unless the run is expected to succeed)."""
    from asymlora.federated.flower.launch import flower_env, run_deployment

    env = flower_env({"FLWR_HOME": str(tmp_path / "flwr-home"), "OMP_NUM_THREADS": "1"})
    bindir = Path(sys.executable).parent
    link = free_port()
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        procs.append(subprocess.Popen(
            [str(bindir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link),
             "--disable-runtime-dependency-installation"],
            env=env, stdout=open(logs / "superlink.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_port(link, procs[0])
        for i in range(n_nodes):
            procs.append(subprocess.Popen(
                [str(bindir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                 "--host", "127.0.0.1", "--port", str(free_port()),
                 "--node-config", f"partition-id={i} state-dir=\"{tmp_path / f'node{i}-state'}\""],
                env=env, stdout=open(logs / f"supernode{i}.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        code = run_deployment(cfg, superlink=f"127.0.0.1:{link}", insecure=True, timeout=400)
        assert code == expect_code, (logs / "superlink.log").read_text()[-3000:]
    finally:
        stop(procs)
    assert all(p.poll() is not None for p in procs)
    return json.loads((Path(cfg.output_dir) / "results.json").read_text()) if expect_code == 0 else None


def test_a_deployment_whose_serverapp_fails_is_not_exit_0(tmp_path, model_dir, monkeypatch):
    """`flwr run --stream` exits 0 whatever became of the run: the SuperLink's status decides (read
    back as JSON, which FORCE_COLOR must not colour)."""
    from asymlora.federated.flower.launch import RUN_FAILED

    monkeypatch.setenv("FORCE_COLOR", "1")
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2], min_clients=2, connect_timeout=3.0, rounds=1)
    deploy(tmp_path, cfg, 1, expect_code=RUN_FAILED)   # one SuperNode, two needed: the ServerApp times out
    assert not (Path(cfg.output_dir) / "results.json").exists()


def test_deployment_engine_on_loopback(tmp_path, model_dir):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2], max_local_steps=1, eval_every=2)
    results = deploy(tmp_path, cfg, 2)
    assert [r["accepted"] for r in results["rounds"]] == [[0, 1], [0, 1]]
    assert set(results["summary"]["clients"]) == {"0", "1"}
    assert results["summary"]["params_m_measured"] == results["summary"]["params_m_formula"]
    for i in range(2):   # each node's private state stayed in its own directory
        assert (tmp_path / f"node{i}-state" / "applied.safetensors").exists()
        assert (tmp_path / f"node{i}-state" / "predictions-round2.jsonl").exists()
    assert not (tmp_path / "out" / "clients").exists()


def test_secagg_on_a_loopback_deployment_gives_the_plain_mean(tmp_path, model_dir):
    """SecAgg+ across real SuperNode processes: the server's aggregate is the plain in-process run's
    to the quantisation error."""
    from asymlora.federated.engine import LocalEngine
    from asymlora.federated.session import ServerState

    kw = dict(max_local_steps=1, rounds=1, n_train=[4, 6, 2])
    plain = tiny_config(tmp_path / "plain", model_dir, "fedit", [2, 2, 2], **kw)
    LocalEngine(plain).run()
    cfg = tiny_config(tmp_path / "secure", model_dir, "fedit", [2, 2, 2], secagg=True, **kw)
    results = deploy(tmp_path / "secure", cfg, 3)
    (r1,) = results["rounds"]
    assert r1["accepted"] == [0, 1, 2] and len(r1["secagg"]["bytes_received"]) == 3
    a, b = (ServerState.load(c.output_dir + "/server", c).latest for c in (plain, cfg))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=0)
