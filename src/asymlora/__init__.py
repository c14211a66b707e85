"""asymlora: multi-LoRA fine-tuning with asymmetric parameter sharing (ALoRA, Fed-ALoRA).

Importing the package registers its adapters with PEFT, so `peft.get_peft_model` and
`peft.PeftModel.from_pretrained` accept them. The import itself stays light (no torch,
transformers or peft, so the CLI starts at once): the registration runs as soon as PEFT is
imported, before any PEFT function can be called, or at once when PEFT is already loaded.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> the module defining it, imported on first use
_LAZY = {
    "ALoRAConfig": ".adapters",
    "HydraLoRAConfig": ".adapters",
    "MoSLoRAConfig": ".adapters",
    "DecomposedLoRAConfig": ".adapters",
    "get_peft_model": ".adapters.registry",
    "load_adapter": ".adapters.registry",
    "export_lora": ".adapters.export",
    "mean_gates": ".adapters.export",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'asymlora' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


def _register_with_peft() -> None:
    importlib.import_module(".adapters", __name__)  # registers our methods on import


class _RegisterAfterPeft(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `peft` is imported it wraps PEFT's own loader so that our methods
    are registered right after PEFT's package has run, then leaves the import path. (A mere
    `importlib.util.find_spec("peft")`, as Transformers does to see whether PEFT is installed,
    gets a wrapped spec that is never run: the finder stays for the real import.)"""

    _looking = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "peft" or self._looking:
            return None
        self._looking = True
        try:
            spec = importlib.util.find_spec("peft")  # the finders after this one
        finally:
            self._looking = False
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_with_peft()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "peft" in sys.modules:
    _register_with_peft()
elif not any(isinstance(f, _RegisterAfterPeft) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterPeft())
