"""Quantised bases (QLoRA) through bitsandbytes on the CPU: 4-bit nf4 / fp4 and 8-bit.

The reference for merging is PEFT's own LoRA on the same quantised base, given the exported
(identical) LoRA factors: both dequantise, add and quantise again.
"""

import json
import warnings

import peft
import pytest
import torch

import asymlora
from asymlora import ALoRAConfig, DecomposedLoRAConfig, HydraLoRAConfig, MoSLoRAConfig
from asymlora.adapters import iter_adapter_layers
from asymlora.adapters.layer import dense_weight, quantised_bits
from asymlora.models import load_model, tiny_llama

from .conftest import randomise_up_projections

pytest.importorskip("bitsandbytes")

QUANTS = pytest.mark.parametrize("quant", ["nf4", "fp4", "int8"])
TARGETS = ["q_proj", "o_proj"]
CONFIGS = {
    "alora": lambda: ALoRAConfig(r=4, num_experts=3, fixed_gate=[0.5, 0.3, 0.2], lora_dropout=0.0, target_modules=TARGETS),
    "hydralora": lambda: HydraLoRAConfig(r=4, num_experts=3, fixed_gate=[0.1, 0.6, 0.3], lora_dropout=0.0,
                                         target_modules=TARGETS),
    "moslora": lambda: MoSLoRAConfig(r=4, lora_dropout=0.0, target_modules=TARGETS),
    "declora": lambda: DecomposedLoRAConfig(r=4, intermediate_dim=6, lora_dropout=0.0, target_modules=TARGETS),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama with a tokenizer; width 64, as bitsandbytes' CPU 4-bit kernels need (blocks of 64)."""
    from tests.train import helpers

    path = tmp_path_factory.mktemp("quantised") / "tiny-64"
    tiny_llama(hidden=64, intermediate=128, vocab=helpers.VOCAB).save_pretrained(path)
    helpers.tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def ids():
    return torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(0))


def quantised(model_dir, quant, method):
    model, _ = load_model(str(model_dir), quantization=quant)
    model = peft.get_peft_model(model, CONFIGS[method]())
    randomise_up_projections(model, 1)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.clone()


@QUANTS
def test_the_base_is_quantised_and_the_adapter_is_not(model_dir, quant):
    model = quantised(model_dir, quant, "alora")
    layers = [layer for _, layer in iter_adapter_layers(model)]
    assert {quantised_bits(layer.get_base_layer()) for layer in layers} == {8 if quant == "int8" else 4}
    prefix = model.base_model.prefix
    assert {p.dtype for n, p in model.named_parameters() if prefix in n} == {torch.float32}


@QUANTS
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_training_moves_the_adapter_and_leaves_the_base(model_dir, ids, quant, method):
    model = quantised(model_dir, quant, method).train()
    base = [layer.get_base_layer().weight.detach().clone() for _, layer in iter_adapter_layers(model)]
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(layer.get_base_layer().weight, w) for (_, layer), w in zip(iter_adapter_layers(model), base))


def merged_like_peft_lora(tmp_path, model_dir, quant, model):
    """The base weights PEFT's LoRA merges from the exported factors of `model` (in train mode)."""
    asymlora.export_lora(model, tmp_path / "lora")
    reference, _ = load_model(str(model_dir), quantization=quant)
    lora = peft.PeftModel.from_pretrained(reference, str(tmp_path / "lora"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora.merge_adapter()
    theirs = [dense_weight(m.get_base_layer()) for n, m in lora.named_modules() if n.endswith(tuple(TARGETS))]
    assert len(theirs) == 4
    return theirs


@QUANTS
@pytest.mark.parametrize("method", ["alora", "moslora", "declora"])
def test_merge_is_peft_loras_merge_and_unmerge_restores_the_base(tmp_path, model_dir, ids, quant, method):
    model = quantised(model_dir, quant, method).train()  # eval on the CPU repacks 4-bit weights: next test
    before = logits(model, ids)
    w0 = [dense_weight(layer.get_base_layer()).clone() for _, layer in iter_adapter_layers(model)]
    with pytest.warns(UserWarning, match=f"{8 if quant == 'int8' else 4}-bit linear layer may change generations"):
        model.merge_adapter()
    ours = [dense_weight(layer.get_base_layer()) for _, layer in iter_adapter_layers(model)]
    for a, b in zip(ours, merged_like_peft_lora(tmp_path, model_dir, quant, model)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # merged logits stay near the adapted ones: the gap is rounding of the new weight, not corruption
    assert (logits(model, ids) - before).abs().max() < 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.unmerge_adapter()
    step = 0.01 if quant == "int8" else 0.05  # rounding of the restored weight, at most
    for layer_w0, (_, layer) in zip(w0, iter_adapter_layers(model)):
        assert (dense_weight(layer.get_base_layer()) - layer_w0).abs().max() < step


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
def test_a_4bit_merge_after_an_eval_forward_reads_the_repacked_weight(tmp_path, model_dir, ids, quant):
    """An eval-mode forward on the CPU repacks 4-bit weights in place; the merge must still read W0
    (read as it was, the merged weights were off by up to 0.12 here, logits by 0.7)."""
    model = quantised(model_dir, quant, "moslora").eval()
    logits(model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.merge_adapter()
    ours = [dense_weight(layer.get_base_layer()) for _, layer in iter_adapter_layers(model)]
    for a, b in zip(ours, merged_like_peft_lora(tmp_path, model_dir, quant, model)):
        assert (a - b).abs().max() < 0.03  # at most one 4-bit step apart (the repacking keeps absmax in bf16)


@QUANTS
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_export_to_plain_lora_reproduces_the_logits_on_the_quantised_base(tmp_path, model_dir, ids, quant, method):
    model = quantised(model_dir, quant, method).eval()
    expected = logits(model, ids)
    asymlora.export_lora(model, tmp_path / "lora")
    reference, _ = load_model(str(model_dir), quantization=quant)
    lora = peft.PeftModel.from_pretrained(reference, str(tmp_path / "lora")).eval()
    torch.testing.assert_close(logits(lora, ids), expected, rtol=0, atol=1e-3)  # 8-bit matmuls round in fp16


def test_a_routed_adapter_without_a_gate_is_refused_on_a_quantised_base_too(model_dir):
    model, _ = load_model(str(model_dir), quantization="nf4")
    model = peft.get_peft_model(model, ALoRAConfig(r=4, num_experts=3, target_modules=TARGETS))
    w0 = [layer.get_base_layer().weight.clone() for _, layer in iter_adapter_layers(model)]
    with pytest.raises(asymlora.adapters.StaticWeightError):
        model.merge_adapter()
    assert all(torch.equal(layer.get_base_layer().weight, w) for (_, layer), w in zip(iter_adapter_layers(model), w0))


def test_bad_quantisation_names_the_choices(model_dir):
    with pytest.raises(ValueError, match="quantization must be one of nf4, fp4, int8, got 'int4'"):
        load_model(str(model_dir), quantization="int4")


def test_cli_trains_on_a_4bit_and_an_8bit_base(tmp_path, model_dir, capsys):
    from asymlora.cli import main
    from asymlora.train.trainer import load_trained
    from tests.train.test_compare import _write_tasks

    _write_tasks(tmp_path)
    common = ["--model", str(model_dir), "--method", "alora", "--data", f"add={tmp_path / 'add-train.json'}",
              "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--no-progress"]
    for flags, expected in ((["--load-in-4bit", "--bnb-4bit-quant-type", "fp4"], ("fp4", True, False)),
                            (["--load-in-8bit"], ("nf4", False, True))):
        out = tmp_path / flags[0].strip("-")
        assert main(["train", *common, "--out", str(out), *flags]) == 0
        run = json.loads((out / "run.json").read_text())
        training = run["training"]
        assert (training["bnb_4bit_quant_type"], training["load_in_4bit"], training["load_in_8bit"]) == expected
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        model, _, _ = load_trained(out)  # evaluate and export see the base it was trained on
        bits = {quantised_bits(layer.get_base_layer()) for _, layer in iter_adapter_layers(model)}
        assert bits == {4 if "--load-in-4bit" in flags else 8}
    capsys.readouterr()
    for flags, message in ((["--load-in-4bit", "--load-in-8bit"], "load_in_4bit and load_in_8bit exclude each other"),
                           (["--bnb-4bit-quant-type", "fp4"], "bnb_4bit_quant_type applies only with load_in_4bit"),
                           (["--load-in-4bit", "--bnb-4bit-quant-type", "int3"], "bnb_4bit_quant_type must be nf4 or fp4"),
                           (["--load-in-8bit", "--compile"], "torch_compile is not available with a quantised base")):
        out = tmp_path / "refused"
        assert main(["train", *common, "--out", str(out), *flags]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(errors) == 1 and message in errors[0], errors
        assert not out.exists()


def test_a_missing_bitsandbytes_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs bitsandbytes: pip install 'asymlora\[quantization\]'"):
        load_model("any-model", quantization="nf4")
