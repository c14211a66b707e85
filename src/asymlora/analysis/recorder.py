"""Recording the shared matrix's gradient and its expert conflicts during training (Figure 3).

Hooks, not a re-implementation of the layer: a forward hook keeps each routed layer's input x
(the dropped-out x that A actually saw, when dropout ran) and its gates, and a hook on the layer's
output tensor receives g = dL/dy; the per-expert components are formed from those (see
`conflicts`). Components of every backward pass are summed until `end_step`, so gradient
accumulation gives the gradient the optimizer sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .conflicts import conflict_stats, shared_A_components, shared_B_components

__all__ = [
    "GradientConflictRecorder",
    "GradientConflictCallback",
    "AdapterSnapshotCallback",
    "save_conflicts",
    "load_conflicts",
]

_METHOD = {"A": "alora", "B": "hydralora"}  # routed side -> method
_SHARED = {"A": "B", "B": "A"}  # routed side -> shared matrix


class GradientConflictRecorder:
    """Per step and per routed layer: the shared matrix's gradient norm and conflicting expert pairs.

    Use as a context manager around training steps and call `end_step(step)` after each optimizer
    step (before or after `zero_grad`: the recorder keeps its own sums).
    """

    def __init__(self, model: nn.Module, adapter_name: str = "default") -> None:
        from asymlora.adapters import RoutedLayer, iter_adapter_layers

        self.adapter_name = adapter_name
        self.layers = [
            (name, layer)
            for name, layer in iter_adapter_layers(model, RoutedLayer)
            if adapter_name in layer.r and layer.num_experts[adapter_name] > 1
        ]
        if not self.layers:
            raise ValueError(
                f"the model has no ALoRA or HydraLoRA layer with more than one expert for adapter "
                f"{adapter_name!r}: there is no shared matrix whose gradient could conflict"
            )
        self.enabled = True
        self.records: list[dict[str, Any]] = []
        self._sums: dict[str, Tensor] = {}
        self._dropped: dict[str, Tensor | None] = {}
        self._handles: list[Any] = []

    # --- hooks ----------------------------------------------------------------------------------
    def attach(self) -> "GradientConflictRecorder":
        if self._handles:
            raise RuntimeError("GradientConflictRecorder is already attached")
        for name, layer in self.layers:
            dropout = layer.lora_dropout[self.adapter_name]
            self._handles.append(layer.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(dropout.register_forward_hook(self._dropout_hook(name)))
            self._handles.append(layer.register_forward_hook(self._forward_hook(name), with_kwargs=True))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._dropped.clear()

    def __enter__(self) -> "GradientConflictRecorder":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self._dropped[name] = None

        return hook

    def _dropout_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self.enabled and torch.is_grad_enabled():
                self._dropped[name] = output.detach()

        return hook

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            adapter = self.adapter_name
            if not (self.enabled and torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
                return
            if module.disable_adapters or module.merged or adapter not in module.active_adapters:
                return
            x = args[0] if args else kwargs.get("x")
            if not isinstance(x, Tensor):
                return
            dropped = self._dropped.pop(name, None)
            x_a = dropped if dropped is not None else x.detach()
            with torch.no_grad():
                gates = module.gate(x.detach(), adapter)
            output.register_hook(self._grad_hook(name, module, x_a, gates))

        return hook

    def _grad_hook(self, name: str, layer: nn.Module, x: Tensor, gates: Tensor):
        def hook(grad: Tensor) -> None:
            adapter = self.adapter_name
            g = grad.detach().float() * layer.scaling[adapter]  # dL/d(B's output)
            if layer.routed_side == "A":  # ALoRA: B shared, experts are the A_i
                comps = shared_B_components(x, g, layer.experts_A(adapter), gates)
            else:  # HydraLoRA: A shared, experts are the B_i
                comps = shared_A_components(x, g, layer.experts_B(adapter), gates)
            prev = self._sums.get(name)
            self._sums[name] = comps if prev is None else prev + comps

        return hook

    # --- results --------------------------------------------------------------------------------
    def pending(self) -> dict[str, Tensor]:
        """The summed gradient components (n, *shared shape) since the last `end_step`, per layer."""
        return dict(self._sums)

    def end_step(self, step: int) -> list[dict[str, Any]]:
        """Turn this step's summed components into one record per layer that ran, and reset."""
        new = []
        for name, layer in self.layers:
            comps = self._sums.pop(name, None)
            if comps is None:
                continue
            stats = conflict_stats(comps)
            new.append({
                "step": int(step),
                "layer": name,
                "method": _METHOD[layer.routed_side],
                "shared": _SHARED[layer.routed_side],
                **stats.summary(),
            })
        self._sums.clear()
        self.records.extend(new)
        return new


def save_conflicts(records: list[dict[str, Any]], out_dir: str | Path, label: str | None = None) -> dict[str, str]:
    """gradient_conflicts.json (every record) and gradient_conflicts.png (Figure 3 for one run)."""
    from .plots import plot_gradient_conflicts, write_json

    if not records:
        raise ValueError("no gradient-conflict records to save (did any training step run with the recorder?)")
    out = Path(out_dir)
    label = label or f"sharing {records[0]['shared']} ({records[0]['method']})"
    js = write_json({"label": label, "records": records}, out / "gradient_conflicts.json")
    png = plot_gradient_conflicts({label: records}, out / "gradient_conflicts.png")
    return {"json": str(js), "png": str(png)}


def load_conflicts(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """(label, records) from a gradient_conflicts.json written by `save_conflicts`."""
    from ..files import read_settings

    path = Path(path)
    data = read_settings(path, "gradient-conflict file", fmt="json")
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"{path}: expected an object with a 'records' list (written by save_conflicts)")
    for i, rec in enumerate(data["records"]):
        missing = [k for k in ("step", "layer", "grad_norm", "n_conflicts") if k not in rec]
        if missing:
            raise ValueError(f"{path}: record {i} lacks {missing}")
    return str(data.get("label") or path.parent.name), data["records"]


try:  # the callback needs transformers; the recorder itself does not
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is a hard dependency of the package
    TrainerCallback = object  # type: ignore[misc,assignment]


class GradientConflictCallback(TrainerCallback):  # type: ignore[misc]
    """Transformers callback: records every `every`-th optimizer step, writes JSON + PNG at the end
    into `out_dir` (default: <output_dir>/analysis)."""

    def __init__(self, adapter_name: str = "default", every: int = 1, out_dir: str | Path | None = None) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.adapter_name = adapter_name
        self.every = every
        self.out_dir = out_dir
        self.recorder: GradientConflictRecorder | None = None
        self.files: dict[str, str] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if model is None:
            raise ValueError("GradientConflictCallback needs the model (the Trainer passes it as `model`)")
        self.recorder = GradientConflictRecorder(model, self.adapter_name).attach()

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.recorder is not None:
            self.recorder.enabled = state.global_step % self.every == 0

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.recorder is not None and self.recorder.enabled:
            self.recorder.end_step(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.recorder is None:
            return
        self.recorder.detach()
        if self.recorder.records:
            out = Path(self.out_dir) if self.out_dir is not None else Path(args.output_dir) / "analysis"
            self.files = save_conflicts(self.recorder.records, out)


class AdapterSnapshotCallback(TrainerCallback):  # type: ignore[misc]
    """Saves the adapter after the given optimizer steps into <out_dir>/step-<N> (default out_dir
    <output_dir>/snapshots): the BEFORE of `analyze dynamics`. The paper takes step 2, since at
    step 0 B is all zero and has no column space."""

    def __init__(self, steps: tuple[int, ...] = (2,), out_dir: str | Path | None = None) -> None:
        if not steps or any(not isinstance(s, int) or s < 1 for s in steps):
            raise ValueError(f"steps must be positive integers, got {steps!r}")
        self.steps = set(steps)
        self.out_dir = out_dir
        self.saved: dict[int, str] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if state.global_step not in self.steps or state.global_step in self.saved:
            return
        if model is None or not hasattr(model, "save_pretrained"):
            raise ValueError("AdapterSnapshotCallback needs the PEFT model (the Trainer passes it as `model`)")
        root = Path(self.out_dir) if self.out_dir is not None else Path(args.output_dir) / "snapshots"
        target = root / f"step-{state.global_step}"
        model.save_pretrained(str(target), safe_serialization=True)
        self.saved[state.global_step] = str(target)
