"""The maths of each adapter, on one frozen `nn.Linear` (y0 = W0 x, W0: d_out x d_in).

One machinery serves ALoRA and HydraLoRA: both keep a stack of A factors (n_A*r x d_in) and a
stack of B factors (d_out x n_B*r) and route over whichever side has n > 1. ALoRA routes A
(n_A = n, n_B = 1), HydraLoRA routes B (n_A = 1, n_B = n), and n = 1 without a router is LoRA.
Each side is evaluated as one GEMM over all experts (the router's logits ride along in the A GEMM
when no dropout separates them), never as a Python loop over experts.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import DecomposedLoRAConfig, MoSLoRAConfig, _LowRankConfig, _RoutedConfig


class StaticWeightError(RuntimeError):
    """Raised when a merge or export needs a static update that a token-routed adapter lacks."""


def kaiming_(t: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """PEFT's LoRA init for A (kaiming-uniform, a = sqrt 5: bound 1/sqrt(fan_in)), seedable."""
    bound = 1.0 / math.sqrt(t.shape[-1])
    with torch.no_grad():
        return t.uniform_(-bound, bound, generator=generator)


def layer_generator(seed: Optional[int], key: str) -> Optional[torch.Generator]:
    """A generator per (seed, module name), so that a seeded adapter differs from layer to layer."""
    if seed is None:
        return None
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))


class AdapterLayer(BaseTunerLayer):
    """Plumbing every asymlora layer shares: per-adapter rank, scaling and dropout, merging through
    `delta_weight`, dtype handling. Subclasses name their parameters and write the maths."""

    other_param_names: tuple[str, ...] = ("r", "lora_alpha", "scaling", "lora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict()
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ParameterDict())
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"asymlora adapters wrap nn.Linear layers only, got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features

    # --- set-up -------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config: _LowRankConfig, key: str = "",
                     inference_mode: bool = False) -> None:
        self.r[adapter_name] = config.r
        self.lora_alpha[adapter_name] = config.lora_alpha
        self.scaling[adapter_name] = config.lora_alpha / config.r
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.create_parameters(adapter_name, config, layer_generator(config.init_seed, key))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def create_parameters(self, adapter_name: str, config: _LowRankConfig,
                          generator: Optional[torch.Generator]) -> None:
        raise NotImplementedError

    def _new(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(*shape))

    def _param(self, kind: str, adapter_name: str) -> torch.Tensor:
        return getattr(self, self.prefix + kind)[adapter_name]

    # --- maths --------------------------------------------------------------------------------
    def adapter_output(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter's additive contribution for input x (scaling included)."""
        raise NotImplementedError

    def lora_factors(self, adapter_name: str, gate: Optional[Any] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_eff k x d_in, B_eff d_out x k) with dW = scaling * B_eff A_eff: the plain LoRA this adapter
        equals (routed adapters: at a fixed gate). Raises StaticWeightError where no such LoRA exists."""
        raise NotImplementedError

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The static update dW (d_out x d_in) such that the adapter adds dW x."""
        A_eff, B_eff = self.lora_factors(adapter_name)
        return (B_eff @ A_eff) * self.scaling[adapter_name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for adapter_name in self.active_adapters:
            if adapter_name in self.r:
                result = result + self.adapter_output(adapter_name, x).to(result.dtype)
        return result

    # --- merging ------------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        names = [a for a in (adapter_names or self.active_adapters) if a in self.r]
        base = self.get_base_layer()
        for name in names:
            if name in self.merged_adapters:
                continue
            delta = self.delta_weight(name).to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"merging adapter {name!r} produced NaN or Inf weights")
                base.weight.data = merged
            else:
                base.weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            base.weight.data -= self.delta_weight(name).to(base.weight.dtype)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        try:
            self.lora_factors(adapter_name)
        except StaticWeightError:
            return False
        return True

    @property
    def prefix(self) -> str:
        return self.adapter_layer_names[0].rsplit("_", 1)[0] + "_"


class RoutedLayer(AdapterLayer):
    """ALoRA and HydraLoRA: stacked A (n_A*r x d_in), stacked B (d_out x n_B*r), router (n x d_in).

    `routed_side` is "A" (ALoRA) or "B" (HydraLoRA)."""

    routed_side: str = "A"
    other_param_names = AdapterLayer.other_param_names + ("num_experts", "fixed_gate")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.num_experts: dict[str, int] = {}
        self.fixed_gate: dict[str, Optional[torch.Tensor]] = {}
        # Called as sink(layer, adapter_name, gates) when set: how gate recorders observe routing.
        self.gate_sink: Optional[Callable[["RoutedLayer", str, torch.Tensor], None]] = None

    def _n_sides(self, adapter_name: str) -> tuple[int, int]:
        n = self.num_experts[adapter_name]
        return (n, 1) if self.routed_side == "A" else (1, n)

    def create_parameters(self, adapter_name: str, config: _RoutedConfig,
                          generator: Optional[torch.Generator]) -> None:
        n, r = config.num_experts, config.r
        self.num_experts[adapter_name] = n
        n_a, n_b = self._n_sides(adapter_name)
        A = self._new(n_a * r, self.in_features)
        for i in range(n_a):  # every expert its own draw: different initialisations are the point
            kaiming_(A.data[i * r:(i + 1) * r], generator)
        B = self._new(self.out_features, n_b * r)
        if not config.init_weights:
            kaiming_(B.data, generator)
        getattr(self, self.prefix + "A")[adapter_name] = A
        getattr(self, self.prefix + "B")[adapter_name] = B
        if n > 1:
            getattr(self, self.prefix + "router")[adapter_name] = kaiming_(self._new(n, self.in_features), generator)
        self.set_fixed_gate(adapter_name, config.fixed_gate)

    def set_fixed_gate(self, adapter_name: str, gate: Optional[Any]) -> None:
        """Route every token with this gate vector instead of the router (None restores routing).
        A fixed gate makes the update static, so the adapter can merge and export as plain LoRA."""
        if gate is None:
            self.fixed_gate[adapter_name] = None
            return
        gate = torch.as_tensor(gate, dtype=torch.float32).flatten()
        n = self.num_experts[adapter_name]
        if gate.numel() != n:
            raise ValueError(f"fixed gate has {gate.numel()} weights but the adapter has {n} experts")
        if not torch.isfinite(gate).all():
            raise ValueError("fixed gate contains NaN or Inf")
        self.fixed_gate[adapter_name] = gate

    # views for analysis and export
    def experts_A(self, adapter_name: str) -> torch.Tensor:
        """(n_A, r, d_in)."""
        r = self.r[adapter_name]
        return self._param("A", adapter_name).view(-1, r, self.in_features)

    def experts_B(self, adapter_name: str) -> torch.Tensor:
        """(n_B, d_out, r)."""
        r = self.r[adapter_name]
        return self._param("B", adapter_name).view(self.out_features, -1, r).permute(1, 0, 2)

    def router_weight(self, adapter_name: str) -> Optional[torch.Tensor]:
        routers = getattr(self, self.prefix + "router")
        return routers[adapter_name] if adapter_name in routers else None

    def gate(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """Per-token softmax gates (..., n), float32: what the router makes of x."""
        fixed = self.fixed_gate.get(adapter_name)
        if fixed is not None:
            return fixed.to(x.device).expand(*x.shape[:-1], -1)
        W_g = self.router_weight(adapter_name)
        if W_g is None:
            return x.new_ones(*x.shape[:-1], 1, dtype=torch.float32)
        return F.linear(x.to(W_g.dtype), W_g).float().softmax(-1)

    def adapter_output(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        A, B = self._param("A", adapter_name), self._param("B", adapter_name)
        W_g = self.router_weight(adapter_name)
        fixed = self.fixed_gate.get(adapter_name)
        dropout = self.lora_dropout[adapter_name]
        r, n = self.r[adapter_name], self.num_experts[adapter_name]
        x = self._cast_input_dtype(x, A.dtype)
        no_dropout = isinstance(dropout, nn.Identity) or not self.training
        if W_g is not None and fixed is None and no_dropout:
            # one GEMM: every expert's projection and the router's logits together
            h, logits = F.linear(x, torch.cat([A, W_g])).split([A.shape[0], n], dim=-1)
            gates = logits.float().softmax(-1)
        else:
            h = F.linear(dropout(x), A)
            if n == 1:
                gates = None
            elif fixed is not None:
                gates = fixed.to(x.device)
            else:
                gates = F.linear(x, W_g).float().softmax(-1)
        if gates is not None:
            if self.gate_sink is not None:
                self.gate_sink(self, adapter_name, gates.detach())
            # Both methods in one line: weight the (n_A, r) projections by the n gates (n_A = 1
            # broadcasts, so HydraLoRA's single A feeds every head), then let one GEMM against the
            # (d_out, n*r) stack of B's sum over experts. ALoRA's stack is its one B, repeated.
            h = (h.unflatten(-1, (-1, r)) * gates.to(h.dtype).unsqueeze(-1)).flatten(-2)
            if B.shape[1] != h.shape[-1]:
                B = B.repeat(1, n)
        return F.linear(h, B) * self.scaling[adapter_name]

    def lora_factors(self, adapter_name: str, gate: Optional[Any] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ALoRA: A_eff = sum_i w_i A_i with the shared B; HydraLoRA: B_eff = sum_i w_i B_i with the shared A."""
        if gate is None:
            gate = self.fixed_gate.get(adapter_name)
        n = self.num_experts[adapter_name]
        if gate is None:
            if n > 1:
                raise StaticWeightError(
                    f"adapter {adapter_name!r} routes each token; its update is static only at a fixed gate "
                    "(set one with set_fixed_gate, or pass a gate to export)"
                )
            gate = torch.ones(1)
        gate = torch.as_tensor(gate, dtype=torch.float32).flatten()
        if gate.numel() != n:
            raise ValueError(f"gate has {gate.numel()} weights but the adapter has {n} experts")
        A, B = self.experts_A(adapter_name), self.experts_B(adapter_name)
        w = gate.to(device=A.device, dtype=A.dtype)
        if self.routed_side == "A":
            return torch.einsum("n,nrd->rd", w, A), B[0]
        return A[0], torch.einsum("n,nor->or", w, B)


class ALoRALayer(RoutedLayer):
    adapter_layer_names = ("alora_A", "alora_B", "alora_router")
    routed_side = "A"


class HydraLoRALayer(RoutedLayer):
    adapter_layer_names = ("hydralora_A", "hydralora_B", "hydralora_router")
    routed_side = "B"


class MoSLoRALayer(AdapterLayer):
    """B M A with a trainable r x r mixer between the two factors."""

    adapter_layer_names = ("moslora_A", "moslora_M", "moslora_B")

    def create_parameters(self, adapter_name: str, config: MoSLoRAConfig,
                          generator: Optional[torch.Generator]) -> None:
        r = config.r
        self.moslora_A[adapter_name] = kaiming_(self._new(r, self.in_features), generator)
        self.moslora_M[adapter_name] = kaiming_(self._new(r, r), generator)
        B = self._new(self.out_features, r)
        if not config.init_weights:
            kaiming_(B.data, generator)
        self.moslora_B[adapter_name] = B

    def adapter_output(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        A, M, B = (self._param(k, adapter_name) for k in ("A", "M", "B"))
        x = self._cast_input_dtype(x, A.dtype)
        h = F.linear(F.linear(self.lora_dropout[adapter_name](x), A), M)
        return F.linear(h, B) * self.scaling[adapter_name]

    def lora_factors(self, adapter_name: str, gate: Optional[Any] = None) -> tuple[torch.Tensor, torch.Tensor]:
        A, M, B = (self._param(k, adapter_name) for k in ("A", "M", "B"))
        return M @ A, B


class DecomposedLayer(AdapterLayer):
    """The heterogeneous Fed-ALoRA layer, and its mirror for FedSA-LoRA*.

    shared_side "B": dW = (B0 + B2 B1) M A;  A r x d_in, M d_m x r, B1 r x d_m, B2 d_out x r,
                     B0 d_out x d_m (an untrained accumulator, the same shape for every client).
    shared_side "A": dW = B M (A0 + A1 A2);  B d_out x r, M r x d_m, A1 d_m x r, A2 r x d_in,
                     A0 d_m x d_in.
    The zero-initialised factor is B2 (resp. A2), so the adapted model starts equal to the base.
    """

    adapter_layer_names = ("declora_A", "declora_M", "declora_B", "declora_A1", "declora_A2",
                           "declora_B1", "declora_B2")
    other_param_names = AdapterLayer.other_param_names + ("declora_B0", "declora_A0", "shared_side",
                                                          "intermediate_dim")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.declora_B0 = BufferDict(persistent=True)
        self.declora_A0 = BufferDict(persistent=True)
        self.shared_side: dict[str, str] = {}
        self.intermediate_dim: dict[str, int] = {}

    def create_parameters(self, adapter_name: str, config: DecomposedLoRAConfig,
                          generator: Optional[torch.Generator]) -> None:
        r, d_m = config.r, config.intermediate_dim
        self.shared_side[adapter_name] = config.shared_side
        self.intermediate_dim[adapter_name] = d_m
        p = lambda name: getattr(self, "declora_" + name)  # noqa: E731
        if config.shared_side == "B":
            p("A")[adapter_name] = kaiming_(self._new(r, self.in_features), generator)
            p("M")[adapter_name] = kaiming_(self._new(d_m, r), generator)
            p("B1")[adapter_name] = kaiming_(self._new(r, d_m), generator)
            p("B2")[adapter_name] = self._new(self.out_features, r)
            self.declora_B0[adapter_name] = torch.zeros(self.out_features, d_m)
        else:
            p("B")[adapter_name] = kaiming_(self._new(self.out_features, r), generator)
            p("M")[adapter_name] = kaiming_(self._new(r, d_m), generator)
            p("A1")[adapter_name] = kaiming_(self._new(d_m, r), generator)
            p("A2")[adapter_name] = self._new(r, self.in_features)
            self.declora_A0[adapter_name] = torch.zeros(d_m, self.in_features)
        if not config.init_weights:
            kaiming_(self._outer_zero(adapter_name).data, generator)

    def _outer_zero(self, adapter_name: str) -> torch.Tensor:
        return self._param("B2" if self.shared_side[adapter_name] == "B" else "A2", adapter_name)

    def accumulator(self, adapter_name: str) -> torch.Tensor:
        """B0 (d_out x d_m) or A0 (d_m x d_in): the sum of every broadcast so far."""
        return (self.declora_B0 if self.shared_side[adapter_name] == "B" else self.declora_A0)[adapter_name]

    def shared_product(self, adapter_name: str) -> torch.Tensor:
        """B2 B1 (d_out x d_m) or A1 A2 (d_m x d_in): what the server aggregates."""
        if self.shared_side[adapter_name] == "B":
            return self._param("B2", adapter_name) @ self._param("B1", adapter_name)
        return self._param("A1", adapter_name) @ self._param("A2", adapter_name)

    def adapter_output(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        acc = self.accumulator(adapter_name)
        x = self._cast_input_dtype(x, acc.dtype)
        x = self.lora_dropout[adapter_name](x)
        P = lambda k: self._param(k, adapter_name)  # noqa: E731
        if self.shared_side[adapter_name] == "B":
            h = F.linear(F.linear(x, P("A")), P("M"))
            out = F.linear(h, acc) + F.linear(F.linear(h, P("B1")), P("B2"))
        else:
            h = F.linear(x, acc) + F.linear(F.linear(x, P("A2")), P("A1"))
            out = F.linear(F.linear(h, P("M")), P("B"))
        return out * self.scaling[adapter_name]

    def lora_factors(self, adapter_name: str, gate: Optional[Any] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A rank-d_m LoRA: B side (B0 + B2 B1, M A); A side (B M, A0 + A1 A2)."""
        acc = self.accumulator(adapter_name)
        P = lambda k: self._param(k, adapter_name)  # noqa: E731
        if self.shared_side[adapter_name] == "B":
            return P("M") @ P("A"), acc + P("B2") @ P("B1")
        return acc + P("A1") @ P("A2"), P("B") @ P("M")
