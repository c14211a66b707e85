"""The federated YAML config: strict keys, clear errors, and the round trip through Flower's run
config (scalars only)."""

from __future__ import annotations

import pytest

from asymlora.federated.config import ConfigError, FederatedConfig
from asymlora.train.config import TrainConfig

BASE = dict(model="m", data_dir="d", method="fedalora", output_dir="o")


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    p = write(tmp_path, "model: m\ndata_dir: d\nmethod: fedit\noutput_dir: o\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key\(s\) \['learning_rate'\]"):
        FederatedConfig.from_yaml(p)
    p = write(tmp_path, "model: m\ndata_dir: d\nmethod: fedit\noutput_dir: o\ntraining:\n  learing_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: training: unknown key\(s\) \['learing_rate'\]"):
        FederatedConfig.from_yaml(p)
    p = write(tmp_path, "model: m\ndata_dir: d\nmethod: fedit\noutput_dir: o\nadapter:\n  r: 4\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: adapter: unknown key\(s\) \['r'\]"):
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
    with pytest.raises(ConfigError, match=r"training\.learning_rate: expected float, got str 'fast'"):
        FederatedConfig.from_dict({**BASE, "training": {"learning_rate": "fast"}})
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
    cfg = FederatedConfig(**BASE, ranks=[64, 32, 8], d_m=16, adapter={"target_modules": ["q_proj", "v_proj"]},
                          training={"learning_rate": 5e-4, "report_to": ["tensorboard", "wandb"], "packing": True,
                                    "extra_args": {"adam_beta2": 0.99}}, evaluation={"num_beams": 2},
                          client_timeout=30)
    rc = cfg.to_run_config()
    assert all(isinstance(v, (str, int, float, bool)) for v in rc.values())
    assert rc["ranks"] == "64,32,8" and rc["adapter.target_modules"] == "q_proj,v_proj"
    assert rc["adapter.lora_alpha"] == "" and rc["training.temperature"] == ""
    assert rc["training.report_to"] == "tensorboard,wandb" and rc["training.extra_args"] == '{"adam_beta2": 0.99}'
    assert "training.seed" not in rc                       # the run's seed is the top-level one
    back = FederatedConfig.from_run_config(rc)
    assert back == cfg
    assert back.fingerprint() == cfg.fingerprint()
    assert FederatedConfig.from_run_config(FederatedConfig(**BASE).to_run_config()) == FederatedConfig(**BASE)


def test_the_yaml_layout_is_a_training_configs_sections(tmp_path):
    p = write(tmp_path, "model: m\ndata_dir: d\noutput_dir: o\nmethod: fedalora\nranks: [8, 4]\n"
                        "adapter: {target_modules: [q_proj], lora_dropout: 0.0}\n"
                        "training: {learning_rate: 1.0e-3, max_steps: 4, packing: true, loss_chunk_size: 64,\n"
                        "           precision: fp32, gradient_checkpointing: true, lr_scheduler: cosine}\n"
                        "evaluation: {batch_size: 4, max_new_tokens: 16}\n")
    cfg = FederatedConfig.from_yaml(p)
    assert cfg.adapter.target_modules == ["q_proj"] and cfg.adapter.lora_dropout == 0.0
    assert isinstance(cfg.training, TrainConfig)
    t = cfg.training
    assert (t.learning_rate, t.max_steps, t.packing, t.loss_chunk_size, t.gradient_checkpointing, t.lr_scheduler) \
        == (1e-3, 4, True, 64, True, "cosine")
    assert (t.batch_size, t.num_epochs, t.grad_accum) == (8, 1.0, 1)          # a round's defaults
    assert (cfg.evaluation.batch_size, cfg.evaluation.max_new_tokens, cfg.evaluation.num_beams) == (4, 16, 1)
    assert cfg.to_dict()["training"]["packing"] is True and "seed" not in cfg.to_dict()["training"]


def test_a_flat_config_still_loads_with_one_warning_per_moved_key(tmp_path, caplog):
    p = write(tmp_path, "model: m\ndata_dir: d\nmethod: fedit\noutput_dir: o\nlr: 1.0e-3\nmax_local_steps: 3\n"
                        "targets: [q_proj]\neval_batch_size: 4\ntemplate: alpaca\n")
    with caplog.at_level("WARNING", logger="asymlora.federated"):
        cfg = FederatedConfig.from_yaml(p)
    assert (cfg.training.learning_rate, cfg.training.max_steps, cfg.training.template) == (1e-3, 3, "alpaca")
    assert cfg.adapter.target_modules == ["q_proj"] and cfg.evaluation.batch_size == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert any(line.endswith("`lr` moved to `training.learning_rate`; it still works here, write it there")
               for line in lines)
    assert any("`eval_batch_size` moved to `evaluation.batch_size`" in line for line in lines)
    new = write(tmp_path, "model: m\ndata_dir: d\nmethod: fedit\noutput_dir: o\ntraining: {learning_rate: 1.0e-3, "
                          "max_steps: 3, template: alpaca}\nadapter: {target_modules: [q_proj]}\n"
                          "evaluation: {batch_size: 4}\n")
    assert FederatedConfig.from_yaml(new) == cfg
    both = write(tmp_path, "model: m\ndata_dir: d\nmethod: fedit\noutput_dir: o\nlr: 0.1\n"
                           "training: {learning_rate: 0.2}\n")
    with pytest.raises(ConfigError, match=r"lr and training\.learning_rate are both given; lr moved to "
                                          r"training\.learning_rate: remove lr"):
        FederatedConfig.from_yaml(both)


@pytest.mark.parametrize("key,text,message", [
    ("lr", "training: {learning_rate: .nan}", r"training: learning_rate must be a finite number, got nan"),
    ("epochs", "training: {num_epochs: .inf}", r"training: num_epochs must be a finite number, got inf"),
    ("clip", "training: {max_grad_norm: .nan}", r"training: max_grad_norm must be a finite number, got nan"),
    ("alpha", "adapter: {lora_alpha: .nan}", r"adapter: lora_alpha: must be a finite number > 0, got nan"),
    ("dropout", "adapter: {lora_dropout: .nan}", r"adapter: lora_dropout: must be in \[0, 1\), got nan"),
    ("fraction", "fraction: .nan", r"fraction: must be in \(0, 1\], got nan"),
    ("timeout", "client_timeout: .inf", r"client_timeout: must be a finite number of seconds > 0, got inf"),
    ("scale", "feddpa_similarity_scale: .nan", r"feddpa_similarity_scale: must be in \[0, 1\], got nan"),
    ("seed", "training: {seed: 3}", r"training\.seed: not a federated setting: every client's round is seeded "
                                    r"from the run's top-level seed"),
    ("4bit", "training: {load_in_4bit: true}", r"training\.load_in_4bit: not a federated setting: a federated "
                                               r"client trains on a full-precision base"),
    ("section", "training: [1]", r"training: expected a mapping of settings, got list"),
])
def test_every_value_is_checked_with_one_line_naming_the_key(tmp_path, key, text, message):
    p = write(tmp_path, f"model: m\ndata_dir: d\nmethod: fedit\noutput_dir: o\n{text}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: " + message) as err:
        FederatedConfig.from_yaml(p)
    assert "\n" not in str(err.value)


def test_a_data_dir_that_does_not_exist_is_named_before_a_model_loads(tmp_path):
    cfg = FederatedConfig(**{**BASE, "data_dir": str(tmp_path / "nope")}, ranks=[4, 4])
    with pytest.raises(ConfigError, match=r"data_dir: .*nope does not exist or is not a folder"):
        cfg.check_data()
    (tmp_path / "nope").mkdir()
    (tmp_path / "nope" / "local_training_0.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"lacks local_training_1\.json, a test file \(test\.jsonl, test\.json or global_test\.json\) \(the FLAN layout"):
        cfg.check_data()
    (tmp_path / "nope" / "local_training_1.json").write_text("[]")
    (tmp_path / "nope" / "test.jsonl").write_text("")
    cfg.check_data()


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

    import yaml

    from asymlora.federated.config import MOVED_KEYS

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
        assert not set(yaml.safe_load(f.read_text())) & set(MOVED_KEYS), f"{f.name} is still flat"


def test_docs_name_every_key_of_every_section():
    import dataclasses
    from pathlib import Path

    from asymlora.federated.config import SECTION_TYPES

    text = (Path(__file__).resolve().parents[2] / "docs" / "federated.md").read_text()
    section = text[text.index("## The config"):text.index("**Initial adapters")]
    keys = [f.name for f in dataclasses.fields(FederatedConfig)]
    keys += [f.name for name, cls in SECTION_TYPES.items() if name != "training" for f in dataclasses.fields(cls)]
    missing = [k for k in keys if f"`{k}`" not in section]
    assert not missing, f"docs/federated.md's config section lacks {missing}"


def test_a_dolly_style_global_test_file_is_found(tmp_path, model_dir):
    from asymlora.federated.client import client_examples

    from .runtime_helpers import tiny_config

    cfg = tiny_config(tmp_path, model_dir, "fedit", [2, 2])
    data = tmp_path / "data"
    (data / "test.jsonl").rename(data / "global_test.jsonl")
    cfg.check_data()
    train, test = client_examples(0, data_dir=str(data))
    assert train and test and all(ex.task == train[0].task for ex in test)
    (data / "global_test.jsonl").unlink()
    with pytest.raises(Exception, match=r"lacks a test file \(test.jsonl, test.json or global_test.json\)"):
        cfg.check_data()
