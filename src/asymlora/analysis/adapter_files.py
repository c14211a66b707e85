"""Reading the A and B factors of a saved adapter directory, without a base model.

The analyses compare factors of two saved runs layer by layer; loading the base model for that
would cost minutes and memory for nothing, so we read `adapter_config.json` and
`adapter_model.safetensors` directly (safetensors only: pickled weights are never loaded).
Supported: PEFT LoRA (also what `export_lora` writes), ALoRA and HydraLoRA.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..files import read_settings

__all__ = ["AdapterFileError", "LayerFactors", "AdapterFactors", "load_adapter_factors", "check_comparable"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# peft_type in adapter_config.json -> (method, parameter prefix)
_METHODS = {
    "LORA": ("lora", "lora_"),
    "ASYMLORA_ALORA": ("alora", "alora_"),
    "ASYMLORA_HYDRALORA": ("hydralora", "hydralora_"),
}
METHOD_NAMES = {"lora": "LoRA", "alora": "ALoRA", "hydralora": "HydraLoRA"}


class AdapterFileError(ValueError):
    """A saved adapter directory that cannot be analysed (missing file, unknown method, bad tensors)."""



def layer_order_key(name: str) -> tuple:
    """Natural order of module names, so that layer 2 comes before layer 10 (files store keys sorted
    as text)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))

@dataclass(frozen=True)
class LayerFactors:
    """One adapted layer: A experts (n_A, r, d_in), B experts (n_B, d_out, r), the update's scaling."""

    A: Tensor
    B: Tensor
    scaling: float

    def delta_weight(self) -> Tensor | None:
        """s * B A when the update is static (one A, one B); None for token-routed adapters."""
        if self.A.shape[0] != 1 or self.B.shape[0] != 1:
            return None
        return self.scaling * (self.B[0].double() @ self.A[0].double())


@dataclass(frozen=True)
class AdapterFactors:
    path: Path
    method: str  # "lora" | "alora" | "hydralora"
    layers: dict[str, LayerFactors]  # module name -> factors, in file order

    @property
    def label(self) -> str:
        return METHOD_NAMES[self.method]


def _read_config(path: Path) -> dict:
    cfg_path = path / CONFIG_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory not found: {path}")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}: not a saved adapter directory")
    cfg = read_settings(cfg_path, CONFIG_FILE, AdapterFileError, fmt="json")
    if not isinstance(cfg, dict):
        raise AdapterFileError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _read_weights(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
        extra = f" (found {pickled}: pickled weights are never loaded)" if pickled else ""
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {path}{extra}")
    return load_file(str(weights))


def _lora_scaling(cfg: dict, layer: str, r: int, where: Path) -> float:
    alpha = cfg.get("lora_alpha", 8)
    pattern = cfg.get("alpha_pattern") or {}
    if pattern:
        from peft.utils.other import get_pattern_key

        key = get_pattern_key(list(pattern), layer)
        alpha = pattern.get(key, alpha)
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise AdapterFileError(f"{where / CONFIG_FILE}: lora_alpha must be a positive number, got {alpha!r}")
    return float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else r)


def _group(state: dict[str, Tensor], suffixes: dict[str, str], where: Path) -> dict[str, dict[str, Tensor]]:
    """{layer: {role: tensor}} from keys '<layer><suffix>'; keys of other kinds are left alone."""
    layers: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        for role, suffix in suffixes.items():
            if key.endswith(suffix):
                layers.setdefault(key[: -len(suffix)], {})[role] = tensor
                break
    for name, parts in layers.items():
        for role in ("A", "B"):
            if role not in parts:
                raise AdapterFileError(f"{where / WEIGHTS_FILE}: layer {name!r} has no {role} factor")
    return layers


def load_adapter_factors(path: str | Path) -> AdapterFactors:
    """Read a saved LoRA / ALoRA / HydraLoRA adapter as per-layer expert stacks (float32, CPU)."""
    path = Path(path)
    cfg = _read_config(path)
    peft_type = str(cfg.get("peft_type", ""))
    if peft_type not in _METHODS:
        raise AdapterFileError(
            f"{path}: adapter of type {peft_type or '(none)'!r}; the analyses read LoRA, ALoRA and HydraLoRA "
            "adapters (export other methods to LoRA first)"
        )
    method, prefix = _METHODS[peft_type]
    if method == "lora" and cfg.get("use_dora"):
        raise AdapterFileError(f"{path}: a DoRA adapter; its update is not B A, so the analyses do not apply")
    state = _read_weights(path)
    layers: dict[str, LayerFactors] = {}
    if method == "lora":
        grouped = _group(state, {"A": ".lora_A.weight", "B": ".lora_B.weight"}, path)
        for name, parts in grouped.items():
            A, B = parts["A"].float(), parts["B"].float()
            if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
                raise AdapterFileError(
                    f"{path / WEIGHTS_FILE}: layer {name!r} has A {tuple(A.shape)} and B {tuple(B.shape)}; "
                    "expected r x d_in and d_out x r"
                )
            layers[name] = LayerFactors(A.unsqueeze(0), B.unsqueeze(0), _lora_scaling(cfg, name, A.shape[0], path))
    else:
        r, n = cfg.get("r"), cfg.get("num_experts")
        if not isinstance(r, int) or r <= 0 or not isinstance(n, int) or n <= 0:
            raise AdapterFileError(f"{path / CONFIG_FILE}: needs positive integers r and num_experts, got r={r!r}, "
                                   f"num_experts={n!r}")
        n_a, n_b = (n, 1) if method == "alora" else (1, n)
        alpha = cfg.get("lora_alpha", 2 * r)
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            raise AdapterFileError(f"{path / CONFIG_FILE}: lora_alpha must be a positive number, got {alpha!r}")
        scaling = float(alpha) / r
        grouped = _group(state, {"A": f".{prefix}A", "B": f".{prefix}B"}, path)
        for name, parts in grouped.items():
            A, B = parts["A"].float(), parts["B"].float()
            if A.dim() != 2 or B.dim() != 2 or A.shape[0] != n_a * r or B.shape[1] != n_b * r:
                raise AdapterFileError(
                    f"{path / WEIGHTS_FILE}: layer {name!r} has A {tuple(A.shape)} and B {tuple(B.shape)}; with "
                    f"r={r} and {n} experts a {METHOD_NAMES[method]} layer has A ({n_a * r}, d_in) and B (d_out, {n_b * r})"
                )
            layers[name] = LayerFactors(
                A.reshape(n_a, r, A.shape[1]),
                B.reshape(B.shape[0], n_b, r).permute(1, 0, 2).contiguous(),
                scaling,
            )
    if not layers:
        raise AdapterFileError(f"{path / WEIGHTS_FILE}: no {METHOD_NAMES[method]} A/B factors found")
    ordered = dict(sorted(layers.items(), key=lambda item: layer_order_key(item[0])))
    return AdapterFactors(path=path, method=method, layers=ordered)


def check_comparable(a: AdapterFactors, b: AdapterFactors, names: tuple[str, str] = ("first", "second")) -> None:
    """The two adapters must be of one method with the same layers and the same shapes."""
    na, nb = names
    if a.method != b.method:
        raise AdapterFileError(
            f"{na} adapter ({a.path}) is {a.label} but {nb} adapter ({b.path}) is {b.label}; "
            "compare adapters of one method"
        )
    only_a = [k for k in a.layers if k not in b.layers]
    only_b = [k for k in b.layers if k not in a.layers]
    if only_a or only_b:
        raise AdapterFileError(
            f"the adapters adapt different layers: only in {na} ({a.path}): {only_a[:3]}"
            f"{'...' if len(only_a) > 3 else ''}; only in {nb} ({b.path}): {only_b[:3]}{'...' if len(only_b) > 3 else ''}"
        )
    for name, fa in a.layers.items():
        fb = b.layers[name]
        if fa.A.shape != fb.A.shape or fa.B.shape != fb.B.shape:
            raise AdapterFileError(
                f"layer {name!r}: {na} has A {tuple(fa.A.shape)}, B {tuple(fa.B.shape)} but {nb} has "
                f"A {tuple(fb.A.shape)}, B {tuple(fb.B.shape)} (experts, rows, cols)"
            )
