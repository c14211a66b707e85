"""The federated YAML config: strict keys, clear errors, and the round trip through Flower's run
config (scalars only)."""

from __future__ import annotations

import pytest

from asymlora.federated.config import ConfigError, FederatedConfig

BASE = dict(model="m", data_dir="d", method="fedalora", output_dir="o")


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    p = write(tmp_path, "model: m\ndata_dir: d\nmethod: fedit\noutput_dir: o\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key\(s\) \['learning_rate'\]"):
        FederatedConfig.from_yaml(p)


def test_missing_required_key(tmp_path):
    p = write(tmp_path, "model: m\ndata_dir: d\noutput_dir: o\n")
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['method'\]"):
        FederatedConfig.from_yaml(p)


def test_unreadable_files_are_named_with_the_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"federated config not found: .*nope\.yaml"):
        FederatedConfig.from_yaml(tmp_path / "nope.yaml")
    p = write(tmp_path, "model: m\ndata_dir: d\nranks: [8, 4\nmethod: fedit\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: malformed YAML at line 4, column 7: "):
        FederatedConfig.from_yaml(p)
    with pytest.raises(ConfigError, match=r"run\.yaml: the file is empty"):
        FederatedConfig.from_yaml(write(tmp_path, "  \n"))
    with pytest.raises(ConfigError, match=r"run\.yaml: holds no settings"):
        FederatedConfig.from_yaml(write(tmp_path, "# method: fedit\n"))
    with pytest.raises(ConfigError, match=r"run\.yaml: expected a mapping of keys to values, got list"):
        FederatedConfig.from_yaml(write(tmp_path, "- model: m\n"))


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="unknown federated method 'fedx'"):
        FederatedConfig(**{**BASE, "method": "fedx"})
    with pytest.raises(ConfigError, match=r"lr: expected a number, got 'fast'"):
        FederatedConfig.from_dict({**BASE, "lr": "fast"})
    with pytest.raises(ConfigError, match=r"fraction: must be in \(0, 1\]"):
        FederatedConfig(**BASE, fraction=0.0)
    with pytest.raises(ConfigError, match="ranks: 3 ranks given for num_clients 2"):
        FederatedConfig(**BASE, ranks=[8, 4, 2], num_clients=2)
    with pytest.raises(ConfigError, match="min_clients 3 exceeds the 2 clients"):
        FederatedConfig(**BASE, ranks=[8, 8], min_clients=3)


def test_fedit_refuses_different_ranks_with_the_alternatives():
    with pytest.raises(ConfigError, match="needs one rank for all clients.*zeropadding, flora, fedalora or fedsa"):
        FederatedConfig(**{**BASE, "method": "fedit"}, ranks=[8, 4])


def test_heterogeneity_follows_the_ranks_unless_forced():
    assert FederatedConfig(**BASE, ranks=[8, 4]).uses_decomposition
    assert not FederatedConfig(**BASE, ranks=[8, 8]).uses_decomposition
    assert FederatedConfig(**BASE, ranks=[8, 8], heterogeneous=True).uses_decomposition
    cfg = FederatedConfig(**BASE, ranks=[8], num_clients=3)
    assert cfg.client_ranks == [8, 8, 8] and cfg.n_clients == 3


def test_relative_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    p = write(tmp_path, "model: m\ndata_dir: data\nmethod: fedsa\noutput_dir: runs/x\nranks: [4, 2]\n")
    cfg = FederatedConfig.from_yaml(p)
    assert cfg.data_dir == str((tmp_path / "data").resolve())
    assert cfg.output_dir == str((tmp_path / "runs/x").resolve())
    assert cfg.model == "m"  # not a path next to the file: a hub name or alias, left alone


def test_run_config_round_trip():
    cfg = FederatedConfig(**BASE, ranks=[64, 32, 8], d_m=16, targets=["q_proj", "v_proj"], lr=5e-4,
                          max_local_steps=None, client_timeout=30)
    rc = cfg.to_run_config()
    assert all(isinstance(v, (str, int, float, bool)) for v in rc.values())
    assert rc["ranks"] == "64,32,8" and rc["targets"] == "q_proj,v_proj" and rc["max_local_steps"] == ""
    back = FederatedConfig.from_run_config(rc)
    assert back == cfg
    assert back.fingerprint() == cfg.fingerprint()


def test_fingerprint_ignores_rounds_but_not_the_method():
    a = FederatedConfig(**BASE, rounds=2)
    assert a.fingerprint() == FederatedConfig(**BASE, rounds=5).fingerprint()
    assert a.fingerprint() != FederatedConfig(**{**BASE, "method": "fedsa"}).fingerprint()


def test_feddpa_weighting_options_are_checked_and_kept_out_of_the_fingerprint():
    dpa = {**BASE, "method": "feddpa"}
    assert FederatedConfig(**dpa).feddpa_weighting == "dynamic"          # the default
    with pytest.raises(ConfigError, match="feddpa_weighting: expected one of dynamic, fixed, got 'equal'"):
        FederatedConfig(**dpa, feddpa_weighting="equal")
    with pytest.raises(ConfigError, match=r"feddpa_similarity_scale: must be in \[0, 1\], got 2"):
        FederatedConfig.from_dict({**dpa, "feddpa_similarity_scale": 2})
    with pytest.raises(ConfigError, match="feddpa_reference_size: must be a positive integer, got 0"):
        FederatedConfig(**dpa, feddpa_reference_size=0)
    cfg = FederatedConfig(**dpa, feddpa_weighting="fixed", feddpa_reference_size=5, feddpa_similarity_scale=1.0)
    assert FederatedConfig.from_run_config(cfg.to_run_config()) == cfg
    # evaluation-only: a finished run can be re-scored either way, and older runs still resume
    assert cfg.fingerprint() == FederatedConfig(**dpa).fingerprint()


def test_shipped_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "configs" / "federated").glob("*.yaml")) + sorted(
        (root / "experiments" / "federated" / "cpu").glob("*.yaml"))
    assert len(files) >= 9
    for f in files:
        cfg = FederatedConfig.from_yaml(f)
        if "-het" in f.stem:
            assert cfg.client_ranks == [64, 64, 32, 32, 16, 16, 8, 8] and cfg.d_m == 16
        elif "-hom" in f.stem:
            assert cfg.client_ranks == [8] * 8
