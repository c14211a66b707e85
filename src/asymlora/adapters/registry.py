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


def load_adapter(model: Any, path: str, adapter_name: str = "default", is_trainable: bool = False) -> Any:
    """`peft.PeftModel.from_pretrained` restricted to safetensors, with errors that name the problem.

    A directory holding only a pickled `adapter_model.bin` is refused: unpickling runs arbitrary code."""
    import os

    import peft

    register_with_peft()
    weights = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise FileNotFoundError(f"no adapter_config.json in {path!r}: not an adapter directory")
    if not os.path.isfile(weights):
        pickled = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
        extra = f" (found {pickled}: pickled weights are never loaded)" if pickled else ""
        raise FileNotFoundError(f"no adapter_model.safetensors in {path!r}{extra}")
    try:
        return peft.PeftModel.from_pretrained(model, path, adapter_name=adapter_name, is_trainable=is_trainable,
                                              use_safetensors=True)
    except RuntimeError as exc:
        if "size mismatch" in str(exc):
            raise ValueError(f"the adapter in {path!r} does not fit this model: {exc}") from exc
        raise
