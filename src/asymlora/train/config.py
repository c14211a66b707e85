"""Training hyper-parameters, and strict checking of user-written settings.

A typo in a YAML key ("learing_rate") silently falls back to a default in most tools and wastes a
run; here every unknown key or wrong type is an error that names the key and where it was found.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

__all__ = ["ConfigError", "TrainConfig", "check_value", "from_dict_strict", "check_report_to", "field_notes",
           "settings_table"]


class ConfigError(ValueError):
    """A setting is unknown, missing or of the wrong type; the message names it."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', origin)}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(tp)
        return not args or all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if tp is type(None):
        return value is None
    if tp is float:  # an integer is a fine float; a bool is not a number
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def check_value(value: Any, tp: Any, where: str) -> Any:
    """`value` if it has type `tp` (ints accepted as floats), else a ConfigError naming `where`."""
    if not _matches(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is float and isinstance(value, int):
        return float(value)
    return value


T = typing.TypeVar("T")


def from_dict_strict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrongly typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    values = {k: check_value(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    missing = [n for n, f in fields.items() if n not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run. The defaults are the paper's commonsense set-up
    (SPEC §4: 3 epochs, lr 3e-4, batch 4 x accumulation 4, cutoff 256)."""

    learning_rate: float = 3e-4  # peak learning rate of AdamW
    num_epochs: float = 3.0  # passes over the mixed training examples
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 4  # examples per device and step
    grad_accum: int = 4  # micro-batches per optimiser step
    cutoff_len: int = 256  # tokens of prompt + response, at most; longer responses are cut (counted)
    warmup_steps: int = 0  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    lr_scheduler: str = "linear"  # any TrainingArguments lr_scheduler_type
    max_grad_norm: float = 1.0  # gradient clipping
    seed: int = 42  # adapter initialisation, task mixing and dropout
    precision: str = "auto"  # auto: bf16 (or fp16) on a GPU, fp32 on the CPU
    save_steps: int = 500  # checkpoint every this many steps (and at the end)
    save_total_limit: Optional[int] = 2  # checkpoints kept; null keeps all
    logging_steps: int = 10  # loss logged every this many steps
    report_to: Union[str, list[str]] = "none"  # "tensorboard", "wandb", ... as in TrainingArguments
    sampling: str = "proportional"  # proportional | balanced | temperature
    temperature: Optional[float] = None  # with sampling: temperature, task weights n_k^(1/T)
    template: str = "alpaca_short"  # a built-in name, "chat", or a template .json path
    train_on_prompt: bool = False  # put the loss on the prompt tokens too
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory)
    torch_compile: bool = False  # torch.compile the model
    # Speed (same loss):
    packing: bool = False  # pack each batch's examples into rows, no attention across examples
    loss_chunk_size: int = 0  # logits only where there are labels, this many tokens at a time (0: off)
    progress: bool = True  # progress bars
    # Adapter dtype: "base" trains it in the base weights' dtype (bf16 beside a bf16 base: SPEC §5),
    # "float32" upcasts it (PEFT's autocast_adapter_dtype=True).
    adapter_dtype: str = "base"
    # Quantised base (QLoRA), through bitsandbytes: 4-bit nf4 / fp4 with matmuls in the compute dtype
    # (auto: the training precision), or 8-bit. Only for a base loaded by name.
    load_in_4bit: bool = False
    load_in_8bit: bool = False  # an 8-bit base (bitsandbytes), for a base loaded by name
    bnb_4bit_quant_type: str = "nf4"  # 4-bit: nf4 or fp4
    bnb_4bit_compute_dtype: str = "auto"  # 4-bit: dtype of the matmuls; auto: the training precision
    extra_args: dict[str, Any] = field(default_factory=dict)  # any other TrainingArguments field (push_to_hub, ...)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        for name in ("batch_size", "grad_accum", "cutoff_len", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.loss_chunk_size < 0:
            raise ConfigError(f"loss_chunk_size must be >= 0 (0: off), got {self.loss_chunk_size}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ConfigError("set num_epochs > 0 or max_steps > 0")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.sampling not in ("proportional", "balanced", "temperature"):
            raise ConfigError(f"sampling must be proportional, balanced or temperature, got {self.sampling!r}")
        if self.loss_chunk_size and self.extra_args.get("label_smoothing_factor", 0):
            raise ConfigError("loss_chunk_size computes plain cross-entropy: it cannot apply label_smoothing_factor "
                              "(set loss_chunk_size: 0)")
        if (self.sampling == "temperature") != (self.temperature is not None):
            raise ConfigError("temperature is required with sampling: temperature, and only then")
        self._check_quantisation()

    def _check_quantisation(self) -> None:
        if self.adapter_dtype not in ("base", "float32"):
            raise ConfigError(f"adapter_dtype must be base or float32, got {self.adapter_dtype!r}")
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("load_in_4bit and load_in_8bit exclude each other: choose one")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"bnb_4bit_quant_type must be nf4 or fp4, got {self.bnb_4bit_quant_type!r}")
        if self.bnb_4bit_compute_dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"bnb_4bit_compute_dtype must be auto, fp32, bf16 or fp16, got {self.bnb_4bit_compute_dtype!r}")
        changed = [k for k, v in (("bnb_4bit_quant_type", "nf4"), ("bnb_4bit_compute_dtype", "auto"))
                   if getattr(self, k) != v]
        if changed and not self.load_in_4bit:
            raise ConfigError(f"{' and '.join(changed)} applies only with load_in_4bit")
        if self.quantization and self.torch_compile:
            raise ConfigError("torch_compile is not available with a quantised base (bitsandbytes layers)")

    @property
    def quantization(self) -> Optional[str]:
        """nf4, fp4, int8, or None for a base in full precision."""
        if self.load_in_4bit:
            return self.bnb_4bit_quant_type
        return "int8" if self.load_in_8bit else None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "training") -> "TrainConfig":
        return from_dict_strict(cls, data, where)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with `changes`, each checked like a file setting."""
        merged = {**self.to_dict(), **changes}
        return from_dict_strict(type(self), merged, "training")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# report_to integrations and the module each needs (as transformers.integrations checks them).
_REPORTERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
              "comet_ml": ("comet_ml",), "clearml": ("clearml",), "neptune": ("neptune",),
              "trackio": ("trackio",), "swanlab": ("swanlab",), "dvclive": ("dvclive",)}


def check_report_to(report_to: Union[str, list[str]], where: str = "report_to") -> None:
    """Refuse, before any model loads, a logging integration whose package is not installed."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    for name in names:
        if name in ("none", "all"):
            continue
        modules = _REPORTERS.get(name)
        if modules is None:
            continue  # an integration we do not know: transformers will say
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise ConfigError(f"{where}: {name!r} needs the {modules[0]} package, which is not installed "
                              f"(pip install {modules[0]}, or report_to: none)")


def field_notes(cls: type) -> dict[str, str]:
    """What each field of a settings dataclass means: the comment on its line in the class source,
    else the comment lines just above it.
    The reference in docs/ is generated from these, so it says what the code says."""
    import inspect
    import re

    notes: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if not line.startswith("    ") or line.startswith("    def ") or line.startswith("    @"):
            if line.startswith("    def ") or line.startswith("    @"):
                break
            continue
        if text.startswith("#"):
            block.append(text.lstrip("# "))
            continue
        m = re.match(r"    (\w+): [^#]*?(?:  # (.*))?$", line)
        if m is None:
            block = [] if not text else block
            continue
        notes[m.group(1)] = m.group(2) or " ".join(block)
        block = []
    return notes


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return "null" if value is None else f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def settings_table(cls: type, prefix: str = "") -> str:
    """A Markdown table of a settings dataclass: key, type, default, meaning."""
    hints = typing.get_type_hints(cls)
    notes = field_notes(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        note = notes.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {_type_name(hints[f.name])} | {_default_text(f)} | {note} |")
    return "\n".join(rows) + "\n"
