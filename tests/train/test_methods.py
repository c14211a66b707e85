from __future__ import annotations

import peft
import pytest

import asymlora  # noqa: F401  (registers our methods with PEFT)
from asymlora.train.config import ConfigError, TrainConfig
from asymlora.train.methods import METHODS, make_peft_config, parse_targets

from . import helpers

D = 32  # hidden size of helpers.model(); q_proj and o_proj are D x D
N_MODULES = 4  # 2 layers x (q_proj, o_proj)


def _trainable(method: str, **kw) -> int:
    cfg = make_peft_config(method, **({"total_step": 10} if method == "adalora" else {}), **kw)
    model = peft.get_peft_model(helpers.model(), cfg)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("method,per_module", [
    ("lora", 16 * D + D * 16),                      # A r x d, B d x r at r = 16
    ("alora", 3 * 8 * D + D * 8 + 3 * D),           # 3 A experts, one B, router 3 x d at r = 8
    ("hydralora", 8 * D + 3 * D * 8 + 3 * D),       # one A, 3 B heads, router
    ("moslora", 16 * D + D * 16 + 16 * 16),         # A, B and the r x r mixer
    ("loha", 2 * (16 * D + 16 * D)),                # two Hadamard-multiplied LoRA pairs
    ("adalora", 12 * D + D * 12 + 12),              # P, Q at init rank 1.5 r = 12, and Lambda
])
def test_default_budgets_give_the_papers_parameter_counts(method, per_module):
    assert _trainable(method) == N_MODULES * per_module


def test_defaults_follow_spec():
    lora = make_peft_config("lora")
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (16, 32, 0.05)
    assert set(lora.target_modules) == {"q_proj", "o_proj"}
    al = make_peft_config("alora")
    assert (al.r, al.lora_alpha, al.num_experts) == (8, 16, 3)
    hy = make_peft_config("hydralora")
    assert (hy.r, hy.num_experts) == (8, 3)
    ada = make_peft_config("adalora", total_step=100)
    assert (ada.target_r, ada.init_r, ada.lora_alpha, ada.total_step) == (8, 12, 16, 100)
    loha = make_peft_config("loha")
    assert (loha.r, loha.alpha) == (16, 32)
    assert all(make_peft_config(m, **({"total_step": 1} if m == "adalora" else {})).task_type == "CAUSAL_LM"
               for m in METHODS)


def test_overrides():
    cfg = make_peft_config("alora", r=4, num_experts=5, target_modules="q_proj, v_proj", init_seed=7)
    assert (cfg.r, cfg.lora_alpha, cfg.num_experts, cfg.init_seed) == (4, 8, 5, 7)  # alpha stays 2r
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    assert make_peft_config("lora", r=4, lora_alpha=3).lora_alpha == 3
    assert make_peft_config("loha", lora_alpha=5).alpha == 5


def test_parse_targets():
    assert parse_targets("q_proj,o_proj") == ["q_proj", "o_proj"]
    assert parse_targets(r".*\.(q|v)_proj") == r".*\.(q|v)_proj"  # a regex stays a regex
    with pytest.raises(ValueError, match="target_modules"):
        parse_targets([])


def test_bad_method_options():
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        make_peft_config("dora")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rank'\]"):
        make_peft_config("alora", rank=4)
    with pytest.raises(ValueError, match="num_experts applies only"):
        make_peft_config("lora", num_experts=3)
    with pytest.raises(ValueError, match="total_step"):
        make_peft_config("adalora")
    with pytest.raises(ValueError, match="r must be a positive integer"):
        make_peft_config("moslora", r=0)
    with pytest.raises(ValueError, match="not a LoHa option"):
        make_peft_config("loha", lora_dropout=0.1)


def test_train_config_strict():
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0  # ints are fine floats
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learing_rate'\]"):
        TrainConfig.from_dict({"learing_rate": 1e-4})
    with pytest.raises(ConfigError, match=r"training\.batch_size: expected int, got str"):
        TrainConfig.from_dict({"batch_size": "4"})
    with pytest.raises(ConfigError, match=r"training\.bf16|unknown key"):
        TrainConfig.from_dict({"bf16": True})
    with pytest.raises(ConfigError, match=r"progress: expected bool"):
        TrainConfig.from_dict({"progress": 1})
    with pytest.raises(ConfigError, match="precision must be"):
        TrainConfig.from_dict({"precision": "fp8"})
    with pytest.raises(ConfigError, match="temperature is required"):
        TrainConfig(sampling="temperature")
