"""Export to a plain PEFT LoRA adapter, servable by every LoRA stack.

At a fixed gate vector w, ALoRA is exactly the rank-r LoRA (A_eff = sum_i w_i A_i, B) and
HydraLoRA (A, B_eff = sum_i w_i B_i); MoSLoRA is (M A, B) and the decomposed federated layer a
rank-d_m LoRA. The mean gate measured on a user's data is the natural w for one task.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from safetensors.torch import save_file
from torch import nn

from .config import check_gate
from .inspect import iter_adapter_layers, record_gates
from .layer import AdapterLayer, RoutedLayer

Gate = Union[None, torch.Tensor, list[float], Mapping[str, Any]]


@torch.no_grad()
def mean_gates(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
               adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Per routed layer, the gate vector averaged over every real (non-padding) token of `batches`.

    Runs in eval mode (no dropout) and restores the model's mode afterwards."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            with record_gates(model, adapter_name) as gates:
                model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")})
            keep = mask.reshape(-1).bool().cpu() if mask is not None else None
            for name, seen in gates.items():
                g = torch.cat(seen)
                if keep is not None and g.shape[0] == keep.shape[0]:
                    g = g[keep]
                sums[name] = sums.get(name, 0) + g.sum(0)
            count += int(keep.sum()) if keep is not None else int(next(iter(gates.values()))[0].shape[0])
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("mean_gates saw no tokens: the batches were empty")
    return {name: s / count for name, s in sums.items()}


def _gate_for(name: str, layer: RoutedLayer, adapter_name: str, gate: Gate) -> Optional[torch.Tensor]:
    """The gate for one layer, checked (finite, non-negative, summing to 1) before anything is written."""
    if gate is not None and not isinstance(gate, (torch.Tensor, list, tuple)):
        if name not in gate:
            raise KeyError(f"no gate given for routed layer {name!r}; gates were given for {sorted(gate)[:5]}...")
        gate = gate[name]
    if gate is None:
        return None
    return check_gate(gate, layer.num_experts[adapter_name], f"gate for {name}")


def _modules_to_save_state(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The trained copies of `modules_to_save`, keyed as PEFT saves them (the same keys for LoRA)."""
    from peft.utils import get_peft_model_state_dict

    prefix = model.base_model.prefix
    saved = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    return {k: v.detach().cpu().contiguous() for k, v in saved.items() if prefix not in k}


def lora_state_dict(model: nn.Module, adapter_name: str = "default", gate: Gate = None,
                    ) -> tuple[dict[str, torch.Tensor], int, float]:
    """The PEFT LoRA state dict equal to `model`'s adapter, with its rank and scaling."""
    state: dict[str, torch.Tensor] = {}
    ranks, scalings = set(), set()
    for name, layer in iter_adapter_layers(model, AdapterLayer):
        if adapter_name not in layer.r:
            continue
        g = _gate_for(name, layer, adapter_name, gate) if isinstance(layer, RoutedLayer) else None
        A_eff, B_eff = layer.lora_factors(adapter_name, g)
        state[f"{name}.lora_A.weight"] = A_eff.detach().float().cpu().contiguous()
        state[f"{name}.lora_B.weight"] = B_eff.detach().float().cpu().contiguous()
        ranks.add(A_eff.shape[0])
        scalings.add(layer.scaling[adapter_name])
    if not state:
        raise ValueError(f"the model has no asymlora adapter named {adapter_name!r} to export")
    if len(ranks) != 1 or len(scalings) != 1:
        raise ValueError(f"export needs one rank and scaling for every layer, found ranks {ranks}")
    return state, ranks.pop(), scalings.pop()


def _gate_record(gate: Gate) -> object:
    """The gate an export was made at, as JSON: one vector, per-layer vectors, or the layers' fixed gates."""
    as_list = lambda g: [float(x) for x in (g.tolist() if hasattr(g, "tolist") else g)]  # noqa: E731
    if gate is None:
        return "each layer's fixed gate"
    if isinstance(gate, dict):
        return {str(k): as_list(v) for k, v in gate.items()}
    return as_list(gate)


def export_lora(model: nn.Module, out_dir: Union[str, Path], gate: Gate = None,
                adapter_name: str = "default") -> Path:
    """Write `model`'s adapter as a plain PEFT LoRA directory (adapter_config.json +
    adapter_model.safetensors) that `peft.PeftModel.from_pretrained` loads with no asymlora code.

    `gate`: one vector for every routed layer, a {layer name: vector} mapping (e.g. from
    `mean_gates`), or None to use each layer's fixed gate. The directory appears whole or not at all.
    """
    from peft import LoraConfig

    config = model.peft_config[adapter_name]
    state, rank, scaling = lora_state_dict(model, adapter_name, gate)
    prefix = "base_model.model."
    state = {k if k.startswith(prefix) else prefix + k: v for k, v in state.items()}
    if config.modules_to_save:
        state.update(_modules_to_save_state(model, adapter_name))
    lora_config = LoraConfig(
        r=rank,
        lora_alpha=scaling * rank,
        lora_dropout=0.0,
        target_modules=config.target_modules,
        exclude_modules=config.exclude_modules,
        base_model_name_or_path=config.base_model_name_or_path,
        task_type=config.task_type,
        modules_to_save=config.modules_to_save,
    )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"refusing to export into non-empty directory {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        lora_config.save_pretrained(str(tmp))
        (tmp / "asymlora_export.json").write_text(json.dumps(
            {"source_method": str(config.peft_type.value), "adapter_name": adapter_name, "rank": rank,
             "gate": _gate_record(gate)}, indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
