"""The bridge into PEFT's method registry.

PEFT's `register_peft_method` accepts only names already present in its closed `PeftType` enum,
so a method from outside PEFT cannot register itself the documented way. We add our members to
that enum (the same object PEFT looks names up in) and then call `register_peft_method`; after
`import asymlora`, `peft.get_peft_model`, `PeftModel.from_pretrained` and `PeftConfig.from_pretrained`
handle our adapters like PEFT's own.
"""

from __future__ import annotations

from typing import Any

from peft.utils.peft_types import PeftType

# name -> (PeftType value, parameter prefix); the prefix names every parameter of that method.
METHODS: dict[str, str] = {
    "alora": "alora_",
    "hydralora": "hydralora_",
    "moslora": "moslora_",
    "declora": "declora_",
}


def peft_type(name: str) -> PeftType:
    """The PeftType member of one of our methods, creating it on first use."""
    key = f"ASYMLORA_{name.upper()}"
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_ = key
    member._value_ = key
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, key, member)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    return member


_registered = False


def register_with_peft() -> None:
    """Register every asymlora method with PEFT once (idempotent)."""
    global _registered
    if _registered:
        return
    from peft.utils import register_peft_method

    from . import config, model

    pairs = {
        "alora": (config.ALoRAConfig, model.ALoRAModel),
        "hydralora": (config.HydraLoRAConfig, model.HydraLoRAModel),
        "moslora": (config.MoSLoRAConfig, model.MoSLoRAModel),
        "declora": (config.DecomposedLoRAConfig, model.DecomposedLoRAModel),
    }
    for name, (config_cls, model_cls) in pairs.items():
        member = peft_type(name)
        try:
            register_peft_method(
                name=member.value.lower(), config_cls=config_cls, model_cls=model_cls, prefix=METHODS[name]
            )
        except KeyError:  # already registered by an earlier import of a reloaded module
            pass
    _registered = True


def get_peft_model(model: Any, peft_config: Any, adapter_name: str = "default", **kwargs: Any) -> Any:
    """`peft.get_peft_model`, after making sure our methods are registered. PEFT's own function
    works just as well once `asymlora` is imported; this one exists so that the import is implied."""
    import peft

    register_with_peft()
    return peft.get_peft_model(model, peft_config, adapter_name=adapter_name, **kwargs)
