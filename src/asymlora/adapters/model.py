"""Injectors: PEFT `BaseTuner`s that put our layers on a model's target `nn.Linear`s.

PEFT does the module walking, saving, loading, enabling and merging; each tuner here only says
which layer class to build.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _maybe_include_all_linear_layers,
    check_target_module_exists,
)
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.constants import INCLUDE_LINEAR_LAYERS_SHORTHAND
from torch import nn

from .config import _LowRankConfig
from .layer import AdapterLayer, ALoRALayer, DecomposedLayer, HydraLoRALayer, MoSLoRALayer


class _AsymTuner(BaseTuner):
    layer_cls: type[AdapterLayer]
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _pre_injection_hook(self, model: nn.Module, config: _LowRankConfig, adapter_name: str) -> None:
        """Fail early, and helpfully, when the targets match no linear layer (PEFT's own error names
        no alternative). Layers that already carry an adapter count as their linear layer."""
        config = self._prepare_adapter_config(copy.copy(config), self.get_model_config(model))
        if config.target_modules == INCLUDE_LINEAR_LAYERS_SHORTHAND:
            if not _maybe_include_all_linear_layers(copy.copy(config), model).target_modules:
                raise ValueError(f"target_modules='all-linear' found no linear layer in {type(model).__name__} "
                                 "(the output layer is never targeted)")
            return
        linear_names = [name for name, m in model.named_modules() if _is_linear_target(m)]
        if not any(check_target_module_exists(config, name) for name in linear_names):
            suffixes = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
            raise ValueError(
                f"target_modules={_show(config.target_modules)} matches no nn.Linear in "
                f"{type(model).__name__}; its linear modules are named {suffixes}"
            )

    def _check_mergeable(self, adapter_names: Optional[list[str]]) -> None:
        """Every layer's StaticWeightError before any layer changes: never a half-merged model."""
        for module in self.model.modules():
            if isinstance(module, AdapterLayer):
                module.check_mergeable(adapter_names)

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        self._check_mergeable(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: Optional[list[str]] = None) -> nn.Module:
        if merge:
            self._check_mergeable(adapter_names)
        return super()._unload_and_optionally_merge(merge=merge, progressbar=progressbar, safe_merge=safe_merge,
                                                    adapter_names=adapter_names)

    def _create_and_replace(self, config: _LowRankConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str = "", **kwargs: Any) -> None:
        if isinstance(target, self.layer_cls):
            target.update_layer(adapter_name, config, key=current_key)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"{current_key or target_name} is a {type(base).__name__}; asymlora adapters wrap nn.Linear only"
            )
        new_module = self.layer_cls.wrap(target, adapter_name, config, key=current_key, training=target.training)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)


def _is_linear_target(module: nn.Module) -> bool:
    """A linear layer an adapter can wrap: a plain one, or one an adapter already wraps."""
    if isinstance(module, BaseTunerLayer):
        return isinstance(module.get_base_layer(), nn.Linear)
    return isinstance(module, nn.Linear)


def _show(targets: Any) -> Any:
    return sorted(targets) if isinstance(targets, (set, list)) else targets


def _linear_class(layer: type[AdapterLayer]) -> type:
    """The concrete nn.Module for one layer maths (PEFT's pattern: `class Linear(nn.Module, XLayer)`)."""

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        layer.__init__(self, base_layer, **kwargs)

    @classmethod
    def wrap(cls, base_layer: nn.Module, adapter_name: str, config: _LowRankConfig, key: str = "",
             training: bool = True) -> nn.Module:
        module = cls(base_layer)
        module.train(training)  # a layer added to a model in eval mode starts in eval mode (no dropout)
        module._active_adapter = adapter_name
        module.update_layer(adapter_name, config, key=key)
        return module

    return type(layer.__name__.replace("Layer", "Linear"), (nn.Module, layer),
                {"__init__": __init__, "wrap": wrap, "forward": layer.forward, "__module__": __name__})


ALoRALinear = _linear_class(ALoRALayer)
HydraLoRALinear = _linear_class(HydraLoRALayer)
MoSLoRALinear = _linear_class(MoSLoRALayer)
DecomposedLinear = _linear_class(DecomposedLayer)


class ALoRAModel(_AsymTuner):
    prefix = ALoRALayer.prefix
    tuner_layer_cls = ALoRALayer
    layer_cls = ALoRALinear


class HydraLoRAModel(_AsymTuner):
    prefix = HydraLoRALayer.prefix
    tuner_layer_cls = HydraLoRALayer
    layer_cls = HydraLoRALinear


class MoSLoRAModel(_AsymTuner):
    prefix = MoSLoRALayer.prefix
    tuner_layer_cls = MoSLoRALayer
    layer_cls = MoSLoRALinear


class DecomposedLoRAModel(_AsymTuner):
    prefix = DecomposedLayer.prefix
    tuner_layer_cls = DecomposedLayer
    layer_cls = DecomposedLinear
