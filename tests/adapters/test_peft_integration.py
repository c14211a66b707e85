"""Our adapters as PEFT methods: save/load, export to plain LoRA, and the errors users meet."""

import json
import os
import subprocess
import sys

import peft
import pytest
import torch
from safetensors.torch import load_file

import asymlora
from asymlora import ALoRAConfig, DecomposedLoRAConfig, HydraLoRAConfig, MoSLoRAConfig, export_lora, mean_gates
from asymlora.adapters import iter_adapter_layers
from asymlora.models import tiny_llama

from .conftest import randomise_accumulators, randomise_up_projections

CONFIGS = {
    "alora": lambda: ALoRAConfig(r=4, num_experts=3, target_modules=["q_proj", "o_proj"]),
    "hydralora": lambda: HydraLoRAConfig(r=4, num_experts=3, target_modules=["q_proj", "o_proj"]),
    "moslora": lambda: MoSLoRAConfig(r=4, target_modules=["q_proj", "o_proj"]),
    "declora": lambda: DecomposedLoRAConfig(r=4, intermediate_dim=6, target_modules=["q_proj", "o_proj"]),
}


def trained_like(config):
    """A model whose adapter has non-trivial values everywhere (as after training)."""
    model = peft.get_peft_model(tiny_llama(seed=0), config)
    randomise_up_projections(model, 4)
    randomise_accumulators(model, 4)
    return model.eval()


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_save_load_reproduces_logits_bit_for_bit(tmp_path, ids, method):
    model = trained_like(CONFIGS[method]())
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == f"ASYMLORA_{method.upper()}"
    reloaded = asymlora.load_adapter(tiny_llama(seed=0), str(tmp_path))
    assert type(reloaded.peft_config["default"]) is type(model.peft_config["default"])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    # and through vanilla PEFT once asymlora is imported
    vanilla = peft.PeftModel.from_pretrained(tiny_llama(seed=0), str(tmp_path))
    with torch.no_grad():
        assert torch.equal(vanilla(ids).logits, expected)


def test_print_trainable_parameters_counts_only_the_adapter(capsys):
    model = peft.get_peft_model(tiny_llama(), ALoRAConfig(r=4, num_experts=3, target_modules=["q_proj"]))
    model.print_trainable_parameters()
    out = capsys.readouterr().out
    expected = 2 * (3 * 4 * 32 + 32 * 4 + 3 * 32)
    assert f"trainable params: {expected:,}" in out


@pytest.mark.parametrize("method", ["alora", "hydralora"])
def test_export_at_fixed_gate_loads_in_vanilla_peft_and_reproduces_logits(tmp_path, ids, method):
    model = trained_like(CONFIGS[method]())
    gate = [0.6, 0.1, 0.3]
    for _, layer in iter_adapter_layers(model):
        layer.set_fixed_gate("default", gate)
    with torch.no_grad():
        gated = model(ids).logits
    export_lora(model, tmp_path / "lora", gate=gate)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    assert json.loads((tmp_path / "lora" / "asymlora_export.json").read_text())["gate"] == pytest.approx(gate)
    lora = peft.PeftModel.from_pretrained(tiny_llama(seed=0), str(tmp_path / "lora")).eval()
    assert isinstance(lora.base_model, peft.LoraModel)
    with torch.no_grad():
        torch.testing.assert_close(lora(ids).logits, gated, rtol=1e-5, atol=1e-5)


def test_export_with_measured_mean_gates_matches_per_layer_fixed_gates(tmp_path, ids):
    model = trained_like(CONFIGS["alora"]())
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    gates = mean_gates(model, batches)
    assert len(gates) == 4 and all(torch.allclose(g.sum(), torch.tensor(1.0)) for g in gates.values())
    export_lora(model, tmp_path / "lora", gate=gates)
    recorded = json.loads((tmp_path / "lora" / "asymlora_export.json").read_text())["gate"]
    assert recorded.keys() == gates.keys() and all(recorded[k] == pytest.approx(gates[k].tolist()) for k in gates)
    for name, layer in iter_adapter_layers(model):
        layer.set_fixed_gate("default", gates[name])
    with torch.no_grad():
        gated = model(ids).logits
    lora = peft.PeftModel.from_pretrained(tiny_llama(seed=0), str(tmp_path / "lora")).eval()
    with torch.no_grad():
        torch.testing.assert_close(lora(ids).logits, gated, rtol=1e-5, atol=1e-5)


def test_export_is_loadable_without_asymlora(tmp_path, ids):
    """A fresh interpreter that never imports asymlora: what a LoRA serving stack sees."""
    model = trained_like(CONFIGS["moslora"]())
    with torch.no_grad():
        expected = model(ids).logits
    export_lora(model, tmp_path / "lora")
    script = f"""
import json, sys, torch, peft
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
torch.manual_seed(0)
base = LlamaForCausalLM(cfg)
m = peft.PeftModel.from_pretrained(base, {str(tmp_path / 'lora')!r}).eval()
ids = torch.tensor({ids.tolist()})
assert 'asymlora' not in sys.modules
print(json.dumps(m(ids).logits.tolist()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    logits = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_export_refuses_a_routed_adapter_without_a_gate_and_writes_nothing(tmp_path):
    model = trained_like(CONFIGS["alora"]())
    with pytest.raises(asymlora.adapters.StaticWeightError, match="fixed gate"):
        export_lora(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == []


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"r": 0}, "r must be a positive integer"),
    ({"r": -2}, "r must be a positive integer"),
    ({"num_experts": 0}, "num_experts must be an integer >= 1"),
    ({"lora_alpha": 0}, "lora_alpha must be > 0"),
    ({"lora_dropout": 1.5}, "lora_dropout"),
    ({"fixed_gate": [1.0]}, "fixed_gate has 1 weights but the adapter has 3 experts"),
    ({"fixed_gate": [0.5, float("nan"), 0.5]}, "fixed_gate .* contains NaN"),
    ({"fixed_gate": [1.5, -0.5, 0.0]}, "non-negative weights summing to 1"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ALoRAConfig(**{"num_experts": 3, **kwargs})


def test_targets_that_match_nothing_name_the_existing_modules():
    with pytest.raises(ValueError, match=r"matches no nn.Linear.*'q_proj'.*'v_proj'") as info:
        peft.get_peft_model(tiny_llama(), ALoRAConfig(target_modules=["query", "value"]))
    assert "['query', 'value']" in str(info.value)


def test_saved_adapter_of_another_shape_is_refused_clearly(tmp_path):
    trained_like(CONFIGS["alora"]()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"(?s)does not fit this model.*size mismatch for .*alora_A"):
        asymlora.load_adapter(tiny_llama(hidden=48, heads=4, kv_heads=2), str(tmp_path))


def test_loading_never_unpickles(tmp_path):
    model = trained_like(CONFIGS["alora"]())
    model.save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match=r"no adapter_model.safetensors.*pickled weights are never loaded"):
        asymlora.load_adapter(tiny_llama(), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        asymlora.load_adapter(tiny_llama(), str(tmp_path / "missing"))


def test_config_file_with_unknown_keys_is_refused(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"r": 8, "num_experts": 3, "num_expert": 4}))
    with pytest.raises(ValueError, match=r"unknown keys for ALoRAConfig: \['num_expert'\]"):
        ALoRAConfig.from_user_file(path)
    path.write_text(json.dumps({"r": 8, "num_experts": 2, "target_modules": ["q_proj"]}))
    cfg = ALoRAConfig.from_user_file(path)
    assert cfg.num_experts == 2 and cfg.target_modules == {"q_proj"}
    with pytest.raises(FileNotFoundError, match="config file not found"):
        ALoRAConfig.from_user_file(tmp_path / "nope.json")


def test_saved_weights_are_exactly_the_adapter(tmp_path):
    model = trained_like(CONFIGS["alora"]())
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 2 * 4  # 2 layers x (q, o) x (A, B, router, gate)
    assert all(k.split(".")[-1] in ("alora_A", "alora_B", "alora_router", "alora_gate") for k in tensors)
    assert all(not t.any() for k, t in tensors.items() if k.endswith("gate"))  # zeros: routed per token


def test_merge_and_unload_gives_a_plain_model_with_the_same_logits(ids):
    model = trained_like(CONFIGS["moslora"]())
    with torch.no_grad():
        expected = model(ids).logits
    plain = model.merge_and_unload()
    assert not any(isinstance(m, asymlora.adapters.AdapterLayer) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_two_named_adapters_switch_and_save_separately(tmp_path, ids):
    model = trained_like(CONFIGS["alora"]())
    model.add_adapter("other", ALoRAConfig(r=2, num_experts=2, target_modules=["q_proj", "o_proj"]))
    with torch.no_grad():
        first = model(ids).logits.clone()
        model.set_adapter("other")
        # "other" starts at B = 0: the model is the base model again
        with model.disable_adapter():
            base = model(ids).logits.clone()
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)
        model.set_adapter("default")
        torch.testing.assert_close(model(ids).logits, first, rtol=0, atol=0)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_model.safetensors").is_file()
    saved = load_file(str(tmp_path / "other" / "adapter_model.safetensors"))
    assert {tuple(v.shape) for k, v in saved.items() if k.endswith("alora_router")} == {(2, 32)}


@pytest.mark.parametrize("gate,match", [([float("nan"), 0.0, 1.0], "contains NaN or Inf"),
                                        ([float("inf"), 0.0, 0.0], "contains NaN or Inf"),
                                        ([1.5, -0.5, 0.0], "non-negative weights summing to 1")])
def test_export_refuses_a_bad_gate_and_writes_nothing(tmp_path, gate, match):
    model = trained_like(CONFIGS["alora"]())
    with pytest.raises(ValueError, match=match):
        export_lora(model, tmp_path / "lora", gate=gate)
    with pytest.raises(ValueError, match=match):
        export_lora(model, tmp_path / "lora", gate={name: gate for name, _ in iter_adapter_layers(model)})
    assert os.listdir(tmp_path) == []


def test_cli_export_refuses_a_nan_gate_in_one_line(tmp_path, capsys):
    from asymlora.cli import main
    from tests.train.test_compare import _model_dir, _write_tasks

    _write_tasks(tmp_path)
    model = _model_dir(tmp_path)
    assert main(["train", "--model", str(model), "--method", "alora", "--out", str(tmp_path / "run"),
                 "--data", f"add={tmp_path / 'add-train.json'}", "--max-steps", "1", "--no-progress"]) == 0
    capsys.readouterr()
    for gate in ("nan,0,1", "0.5,0.5,inf", "-1,1,1"):
        assert main(["export", str(tmp_path / "run"), str(tmp_path / "lora"), f"--gate={gate}"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and "--gate" in err[0] and ("NaN or Inf" in err[0] or "non-negative" in err[0])
        assert not (tmp_path / "lora").exists()
