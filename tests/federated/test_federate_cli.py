"""`asymlora federate CONFIG`: a YAML file in, the results table out; bad configs are one-line errors."""

from __future__ import annotations

import json

import yaml

from asymlora.cli import main

from .runtime_helpers import tiny_config


def write_yaml(tmp_path, cfg, **extra):
    data = {k: v for k, v in cfg.to_dict().items() if v is not None}
    data.update(extra)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_federate_local_prints_the_table_and_extends_a_run(tmp_path, model_dir, capsys):
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 1], rounds=1)
    path = write_yaml(tmp_path, cfg)
    assert main(["federate", str(path), "--engine", "local"]) == 0
    out = capsys.readouterr().out
    assert "| Fed-ALoRA (r=2,1, d_m=3) |" in out and "Params.(M) sent" in out
    assert main(["federate", str(path), "--rounds", "2"]) == 0          # resumes: only round 2 runs
    rounds = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert main(["federate", str(path), "--fresh", "--rounds", "1"]) == 0
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]) == 1


def test_federate_refuses_unknown_keys(tmp_path, model_dir, capsys):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2])
    path = write_yaml(tmp_path, cfg, local_steps=3)
    assert main(["federate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asymlora federate: error: ") and "unknown key(s) ['local_steps']" in err


def test_deployment_needs_tls_or_an_explicit_insecure(tmp_path, model_dir, capsys):
    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2])
    path = write_yaml(tmp_path, cfg)
    assert main(["federate", str(path), "--engine", "deployment", "--superlink", "10.0.0.1:8000"]) == 2
    assert "needs --root-certificates CA.pem (TLS) or --insecure" in capsys.readouterr().err
    assert main(["federate", str(path), "--engine", "deployment", "--write-app-only"]) == 0
    toml = (tmp_path / "out" / "flower-app" / "pyproject.toml").read_text()
    assert 'serverapp = "asymlora.federated.flower.apps:server_app"' in toml
    assert 'method = "fedit"' in toml and 'ranks = "2,2"' in toml


def test_a_run_in_which_every_client_fails_exits_non_zero_and_prints_no_scores(tmp_path, model_dir, capsys,
                                                                               monkeypatch):
    from asymlora.federated.client import FederatedClient

    def crash(self, server_round):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(FederatedClient, "fit", crash)
    cfg = tiny_config(tmp_path, model_dir, "fedalora", [2, 2], rounds=2)
    path = write_yaml(tmp_path, cfg)
    assert main(["federate", str(path), "--engine", "local"]) == 1
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("asymlora federate: error:")]
    assert err == [f"asymlora federate: error: round 1: 0 valid update(s) of 2 sampled client(s), min_clients is 1; "
                   "rejected: client 0: crashed: RuntimeError: CUDA error: out of memory; client 1: crashed: "
                   f"RuntimeError: CUDA error: out of memory (results so far in {tmp_path / 'out'}; fix the cause "
                   "and run again to resume)"]
    assert "| Fed-ALoRA" not in captured.out                          # no table of an untrained model
    (r1,) = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"]
    assert r1["failed"] and not r1.get("eval")
