"""The contracts of PEFT's generic tuner tests, for every asymlora method, on small local models.

Routed methods get a fixed gate here (their update is static only then); what happens without one
is in test_merging.py.
"""

import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import asymlora
from asymlora import ALoRAConfig, DecomposedLoRAConfig, HydraLoRAConfig, MoSLoRAConfig
from asymlora.adapters import AdapterLayer, iter_adapter_layers
from asymlora.models import tiny_llama

from .conftest import randomise_accumulators, randomise_up_projections

GATE = [0.5, 0.3, 0.2]
METHODS = {
    "alora": lambda **kw: ALoRAConfig(r=4, num_experts=3, fixed_gate=GATE, **kw),
    "hydralora": lambda **kw: HydraLoRAConfig(r=4, num_experts=3, fixed_gate=GATE, **kw),
    "moslora": lambda **kw: MoSLoRAConfig(r=4, **kw),
    "declora_B": lambda **kw: DecomposedLoRAConfig(r=4, intermediate_dim=6, shared_side="B", **kw),
    "declora_A": lambda **kw: DecomposedLoRAConfig(r=4, intermediate_dim=6, shared_side="A", **kw),
}
TARGETS = ["q_proj", "o_proj"]
method_param = pytest.mark.parametrize("method", sorted(METHODS))


def adapted(method, seed=4, model=None, adapter_name="default", **kw):
    """A model whose adapter has non-trivial values everywhere (as after training), in eval mode."""
    kw.setdefault("target_modules", TARGETS)
    kw.setdefault("lora_dropout", 0.0)
    model = peft.get_peft_model(model if model is not None else tiny_llama(seed=0), METHODS[method](**kw),
                                adapter_name=adapter_name)
    randomise_up_projections(model, seed)
    randomise_accumulators(model, 4)
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.clone()


def base_weights(model):
    return {name: layer.get_base_layer().weight.detach().clone() for name, layer in iter_adapter_layers(model)}


@method_param
def test_all_linear_targets_every_linear_layer_but_the_output_head(method, ids):
    plain = {n for n, m in tiny_llama(seed=0).named_modules() if isinstance(m, nn.Linear)} - {"lm_head"}
    model = adapted(method, target_modules="all-linear")
    wrapped = {name.removeprefix("base_model.model.") for name, _ in iter_adapter_layers(model)}
    assert wrapped == plain and len(plain) == 14
    assert logits(model, ids).isfinite().all()


def test_all_linear_on_a_model_without_linear_layers_is_refused():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="all-linear' found no linear layer in Sequential"):
        peft.get_peft_model(model, ALoRAConfig(r=2, num_experts=2, target_modules="all-linear"))


@method_param
def test_a_second_get_peft_model_call_adds_an_adapter_as_with_lora(method, ids):
    base = tiny_llama(seed=0)
    adapted(method, model=base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's "modifying a model with PEFT for a second time"
        again = peft.get_peft_model(base, METHODS[method](target_modules=TARGETS), adapter_name="second")
    layers = list(iter_adapter_layers(again))
    assert len(layers) == 4 and all(set(layer.r) == {"default", "second"} for _, layer in layers)


@method_param
@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_save_and_load_reproduce_the_logits(tmp_path, ids, method, low_cpu_mem_usage):
    model = adapted(method)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(tiny_llama(seed=0), str(tmp_path), low_cpu_mem_usage=low_cpu_mem_usage)
    assert torch.equal(logits(reloaded, ids), expected)
    assert all(p.device.type == "cpu" for p in reloaded.parameters())


@method_param
def test_merge_unmerge_and_safe_merge_with_peft_warnings(ids, method):
    model = adapted(method)
    expected, w0 = logits(model, ids), base_weights(model)
    model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="All adapters are already merged"):
        model.merge_adapter()
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-5, atol=1e-5)  # not added twice
    model.unmerge_adapter()
    for name, w in base_weights(model).items():
        torch.testing.assert_close(w, w0[name], rtol=0, atol=1e-6)
    with pytest.warns(UserWarning, match="Already unmerged"):
        model.unmerge_adapter()


@method_param
def test_safe_merge_refuses_a_broken_adapter_and_changes_nothing(method):
    model = adapted(method)
    layer = next(layer for _, layer in iter_adapter_layers(model))
    w0 = layer.get_base_layer().weight.clone()
    with torch.no_grad():
        next(p for n, p in layer.named_parameters() if n.startswith(layer.prefix)).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaNs detected"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, w0) and not layer.merged


@method_param
def test_merge_and_unload_and_plain_unload(ids, method):
    expected = logits(adapted(method), ids)
    plain = adapted(method).merge_and_unload()
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
    torch.testing.assert_close(logits(plain, ids), expected, rtol=1e-5, atol=1e-5)
    unloaded = adapted(method).unload()
    assert torch.equal(logits(unloaded, ids), logits(tiny_llama(seed=0), ids))


@method_param
def test_disable_and_enable(ids, method):
    model = adapted(method)
    expected, base = logits(model, ids), logits(tiny_llama(seed=0), ids)
    assert not torch.allclose(expected, base)
    with model.disable_adapter():
        assert torch.equal(logits(model, ids), base)
    assert torch.equal(logits(model, ids), expected)
    model.merge_adapter()
    with model.disable_adapter():  # a merged adapter is taken out first, as with LoRA
        torch.testing.assert_close(logits(model, ids), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-5, atol=1e-5)


@method_param
def test_delete_adapter_removes_every_trace(ids, method):
    model = adapted(method)
    expected = logits(model, ids)
    model.add_adapter("other", METHODS[method](target_modules=TARGETS))
    model.delete_adapter("other")
    assert not any(".other" in k for k in model.state_dict())
    for _, layer in iter_adapter_layers(model):
        for attr in layer.adapter_layer_names + layer.other_param_names:
            assert "other" not in getattr(layer, attr)
    assert torch.equal(logits(model, ids), expected)


@method_param
def test_several_adapters_active_at_once_add_their_updates(method):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32)
    model = adapted(method)
    model.add_adapter("b", METHODS[method](target_modules=TARGETS, lora_dropout=0.0))
    randomise_up_projections(model, 9)
    layer = next(layer for _, layer in iter_adapter_layers(model))
    layer.eval()
    base = layer.get_base_layer()(x)
    single = {}
    for name in ("default", "b"):
        layer.set_adapter(name)
        single[name] = layer(x) - base
    layer.set_adapter(["default", "b"])
    torch.testing.assert_close(layer(x), base + single["default"] + single["b"], rtol=1e-5, atol=1e-6)
    layer.merge()  # both at once, and both taken out again
    assert layer.merged_adapters == ["default", "b"]
    torch.testing.assert_close(layer(x), base + single["default"] + single["b"], rtol=1e-4, atol=1e-5)


@method_param
def test_modules_to_save_are_trained_saved_and_exported(tmp_path, ids, method):
    model = adapted(method, modules_to_save=["lm_head"])
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(tiny_llama(seed=0), str(tmp_path / "adapter"))
    assert torch.equal(logits(reloaded, ids), expected)
    asymlora.export_lora(model, tmp_path / "lora")
    saved = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert any("lm_head" in k for k in saved)
    lora = peft.PeftModel.from_pretrained(tiny_llama(seed=0), str(tmp_path / "lora"))
    assert type(lora.peft_config["default"]) is peft.LoraConfig
    torch.testing.assert_close(logits(lora, ids), expected, rtol=1e-5, atol=1e-5)


@method_param
def test_only_adapter_parameters_train_and_each_gets_a_gradient(ids, method):
    model = adapted(method, lora_dropout=0.1).train()
    model(input_ids=ids, labels=ids).loss.backward()
    prefix = model.base_model.prefix
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(prefix in n for n in trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen_with_grad == []


@method_param
@pytest.mark.parametrize("adapter_dtype,expected", [("base", torch.bfloat16), ("float32", torch.float32)])
def test_adapter_dtype_on_a_half_precision_base(ids, method, adapter_dtype, expected):
    model = asymlora.get_peft_model(tiny_llama(seed=0, dtype=torch.bfloat16),
                                    METHODS[method](target_modules=TARGETS), adapter_dtype=adapter_dtype)
    prefix = model.base_model.prefix
    assert {p.dtype for n, p in model.named_parameters() if prefix in n} == {expected}
    out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and out.loss.isfinite()
    out.loss.backward()


def test_adapter_dtype_names_its_choices():
    with pytest.raises(ValueError, match="adapter_dtype must be 'base' or 'float32', got 'fp8'"):
        asymlora.get_peft_model(tiny_llama(), ALoRAConfig(target_modules=TARGETS), adapter_dtype="fp8")


@pytest.mark.parametrize("adapter_dtype,expected", [(None, torch.bfloat16), ("float32", torch.float32)])
def test_training_takes_the_adapter_dtype_option_with_the_base_dtype_by_default(tmp_path, adapter_dtype, expected):
    from asymlora.train import TrainConfig, train
    from tests.train import helpers

    train_set, _ = helpers.tasks(n_train=4, n_test=0, names=("add",))
    options = {} if adapter_dtype is None else {"adapter_dtype": adapter_dtype}
    config = TrainConfig(max_steps=1, batch_size=2, grad_accum=1, progress=False, **options)
    result = train(helpers.model().to(torch.bfloat16), helpers.tokenizer(), train_set, "alora", tmp_path / "run",
                   config=config, adapter={"r": 2})
    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert {t.dtype for k, t in saved.items() if not k.endswith("gate")} == {expected}


def test_training_options_are_checked():
    from asymlora.train import TrainConfig
    from asymlora.train.config import ConfigError

    with pytest.raises(ConfigError, match="adapter_dtype must be base or float32, got 'half'"):
        TrainConfig(adapter_dtype="half")
