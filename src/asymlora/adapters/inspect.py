"""Looking inside an adapted model: its adapter layers and the gates its routers produce."""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .layer import AdapterLayer, RoutedLayer


def iter_adapter_layers(model: nn.Module, kind: type[AdapterLayer] = AdapterLayer) -> Iterator[tuple[str, AdapterLayer]]:
    """(module name, layer) for every asymlora layer in `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, kind):
            yield name, module


@contextmanager
def record_gates(model: nn.Module, adapter_name: str = "default") -> Iterator[dict[str, list[torch.Tensor]]]:
    """Collect, per routed layer, the gates (tokens x n, float32, CPU) of every forward inside the block."""
    gates: dict[str, list[torch.Tensor]] = defaultdict(list)
    layers = list(iter_adapter_layers(model, RoutedLayer))
    if not layers:
        raise ValueError("the model has no routed (ALoRA or HydraLoRA) layers whose gates could be recorded")

    def sink_for(name: str):
        def sink(layer: RoutedLayer, adapter: str, g: torch.Tensor) -> None:
            if adapter == adapter_name:
                gates[name].append(g.reshape(-1, g.shape[-1]).cpu())
        return sink

    previous = {name: layer.gate_sink for name, layer in layers}
    for name, layer in layers:
        layer.gate_sink = sink_for(name)
    try:
        yield gates
    finally:
        for name, layer in layers:
            layer.gate_sink = previous[name]
