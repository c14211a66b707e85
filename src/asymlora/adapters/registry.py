"""The bridge into PEFT's method registry.

PEFT's `register_peft_method` accepts only names already present in its closed `PeftType` enum,
so a method from outside PEFT cannot register itself the documented way. We add our members to
that enum (`config.peft_type`) and then call `register_peft_method`; after
`import asymlora`, `peft.get_peft_model`, `PeftModel.from_pretrained` and `PeftConfig.from_pretrained`
handle our adapters like PEFT's own.
"""

from __future__ import annotations

from typing import Any

from .config import ALoRAConfig, DecomposedLoRAConfig, HydraLoRAConfig, MoSLoRAConfig
from .model import ALoRAModel, DecomposedLoRAModel, HydraLoRAModel, MoSLoRAModel

# Each PEFT method of ours: its config (which names the method) and its tuner (whose layer names the
# parameter prefix).
TUNERS = ((ALoRAConfig, ALoRAModel), (HydraLoRAConfig, HydraLoRAModel), (MoSLoRAConfig, MoSLoRAModel),
          (DecomposedLoRAConfig, DecomposedLoRAModel))

_registered = False


def register_with_peft() -> None:
    """Register every asymlora method with PEFT once (idempotent)."""
    global _registered
    if _registered:
        return
    from peft.utils import register_peft_method

    from .config import peft_type

    for config_cls, model_cls in TUNERS:
        try:
            register_peft_method(name=peft_type(config_cls.method).value.lower(), config_cls=config_cls,
                                 model_cls=model_cls, prefix=model_cls.prefix)
        except KeyError:  # already registered by an earlier import of a reloaded module
            pass
    _registered = True


ADAPTER_DTYPES = ("base", "float32")


def get_peft_model(model: Any, peft_config: Any, adapter_name: str = "default", adapter_dtype: str = "base",
                   **kwargs: Any) -> Any:
    """`peft.get_peft_model`, with our methods registered and the adapter dtype said explicitly.

    adapter_dtype "base" (the default) keeps the adapter in the base weights' dtype (a quantised
    base: its compute dtype), so a bf16 base trains bf16 adapters at bf16 speed; "float32" upcasts
    half-precision adapters, PEFT's own default (`autocast_adapter_dtype=True`), steadier for
    long runs at some cost in speed and memory."""
    import peft

    if adapter_dtype not in ADAPTER_DTYPES:
        raise ValueError(f"adapter_dtype must be 'base' or 'float32', got {adapter_dtype!r}")
    register_with_peft()
    kwargs.setdefault("autocast_adapter_dtype", adapter_dtype == "float32")
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
