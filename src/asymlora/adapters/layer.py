"""The maths of each adapter, on one frozen `nn.Linear` (y0 = W0 x, W0: d_out x d_in).

One machinery serves ALoRA and HydraLoRA: both keep a stack of A factors (n_A*r x d_in) and a
stack of B factors (d_out x n_B*r) and route over whichever side has n > 1. ALoRA routes A
(n_A = n, n_B = 1), HydraLoRA routes B (n_A = 1, n_B = n), and n = 1 without a router is LoRA.
Each side is evaluated as one GEMM over all experts, never as a Python loop over experts, and
without copying any weight per call: ALoRA sums its gated experts before its one B (an r-column
GEMM, as LoRA's), HydraLoRA weights its one A projection per head before the stack of B's.
"""

from __future__ import annotations

import math
import warnings
import zlib
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from .config import DecomposedLoRAConfig, MoSLoRAConfig, _LowRankConfig, _RoutedConfig, check_gate
from .routed_a import routed_a_output, routed_gates


class StaticWeightError(RuntimeError):
    """Raised when a merge or export needs a static update that a token-routed adapter lacks."""


def kaiming_(t: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """PEFT's LoRA init for A (kaiming-uniform, a = sqrt 5: bound 1/sqrt(fan_in)), seedable."""
    bound = 1.0 / math.sqrt(t.shape[-1])
    with torch.no_grad():
        return t.uniform_(-bound, bound, generator=generator)


def layer_generator(seed: Optional[int], key: str, adapter_name: str = "default") -> Optional[torch.Generator]:
    """A generator per (seed, module name, adapter name): a seeded adapter differs from layer to layer
    and from the other adapters on the model. The name "default" is left out of the key, so that
    seeded runs made before adapters were told apart keep their draws."""
    if seed is None:
        return None
    if adapter_name != "default":
        key = f"{key}@{adapter_name}"
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))


# --- the base weight, plain or quantised by bitsandbytes --------------------------------------------
def quantised_bits(base: nn.Module) -> Optional[int]:
    """4 or 8 for a bitsandbytes Linear4bit / Linear8bitLt, None for a plain nn.Linear."""
    return {"Params4bit": 4, "Int8Params": 8}.get(type(base.weight).__name__)


def dense_weight(base: nn.Module) -> torch.Tensor:
    """W0 as a dense floating tensor (dequantised for a quantised base: a copy)."""
    bits = quantised_bits(base)
    if bits is None:
        return base.weight.data
    from peft.utils.integrations import dequantize_bnb_weight

    if bits == 4:
        _unpack_for_cpu(base.weight)
        return dequantize_bnb_weight(base.weight, state=base.weight.quant_state)
    if base.state.SCB is None:
        base.state.SCB = base.weight.SCB
    return dequantize_bnb_weight(base.weight, state=base.state)


def _unpack_for_cpu(weight: torch.Tensor) -> None:
    """Undo bitsandbytes' CPU inference layout (a 4-bit weight repacked in place by an eval-mode
    forward on AVX512-BF16 CPUs), which its dequantisation does not read: PEFT's LoRA merges
    garbage there. bitsandbytes undoes it the same way before saving."""
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)


def set_dense_weight(base: nn.Module, weight: torch.Tensor) -> None:
    """Write W0 back (re-quantised for a quantised base, as PEFT's LoRA does)."""
    bits = quantised_bits(base)
    if bits is None:
        base.weight.data = weight.to(base.weight.dtype)
        return
    import bitsandbytes as bnb

    old = base.weight
    if bits == 4:
        kwargs = {k: v for k, v in old.__dict__.items() if not k.startswith("_") and k != "data"}
        kwargs.update(bnb_quantized=False, requires_grad=False)
        base.weight = bnb.nn.Params4bit(weight.to("cpu"), **kwargs).to(old.device)
    else:
        base.weight = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False,
                                        has_fp16_weights=old.has_fp16_weights).to(old.device)
        base.state.reset_grads()


class AdapterLayer(BaseTunerLayer):
    """Plumbing every asymlora layer shares: per-adapter rank, scaling and dropout, merging through
    `delta_weight`, dtype handling. Subclasses name their parameters (`prefix` + `parts`) and write
    the maths."""

    prefix: str  # names every parameter of the method; the tuner and PEFT's registry read it here
    parts: tuple[str, ...]
    other_param_names: tuple[str, ...] = ("r", "lora_alpha", "scaling", "lora_dropout")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "prefix") and hasattr(cls, "parts"):
            cls.adapter_layer_names = tuple(cls.prefix + p for p in cls.parts)

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
        dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_dropout[adapter_name] = dropout.train(self.training)  # an adapter added after .eval()
        self.create_parameters(adapter_name, config, layer_generator(config.init_seed, key, adapter_name))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        """PEFT's move to the base layer's device and dtype; on a quantised base (integer weights)
        the adapter takes the layer's compute dtype, else stays float32."""
        super()._move_adapter_to_device_of_base_layer(adapter_name, device)
        compute = getattr(self.get_base_layer(), "compute_dtype", None)
        if quantised_bits(self.get_base_layer()) is not None and compute is not None:
            for name in self.adapter_layer_names:
                params = getattr(self, name)
                if adapter_name in params and params[adapter_name].device.type != "meta":
                    params[adapter_name] = params[adapter_name].to(compute)

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
                result = self.add_adapter_output(adapter_name, x, result)
        return result

    def add_adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """result + the adapter's contribution: where a layer can, added inside its last GEMM."""
        return result + self.adapter_output(adapter_name, x).to(result.dtype)

    # --- merging ------------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add the updates of `adapter_names` (default: the active ones) to W0. Every update is computed
        before W0 changes, so an adapter that cannot merge (StaticWeightError) leaves the layer as it was."""
        names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.r]
        if not names:
            return
        deltas = [self.delta_weight(name) for name in names]
        self._add_to_weight(deltas, names, "Merge", check=safe_merge)
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        """Subtract every merged update from W0 (computed first: an error leaves the layer merged)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        names = list(self.merged_adapters)
        self._add_to_weight([-self.delta_weight(name) for name in names], names, "Unmerge", check=False)
        self.merged_adapters.clear()

    def _add_to_weight(self, deltas: list[torch.Tensor], names: list[str], verb: str, check: bool) -> None:
        base = self.get_base_layer()
        bits = quantised_bits(base)
        if bits is not None:
            warnings.warn(f"{verb} of asymlora adapters into a {bits}-bit linear layer may change generations "
                          "through rounding errors (the weight is dequantised, updated and quantised again).")
        weight = dense_weight(base)
        total = sum(d.to(weight.device, weight.dtype) for d in deltas)
        if check or bits is not None:
            weight = weight + total
            if check and not torch.isfinite(weight).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter(s) {names} seem to be broken")
            set_dense_weight(base, weight)
        else:
            weight += total

    def check_mergeable(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise StaticWeightError if one of the adapters (default: the active ones) has no static update."""
        for name in adapter_names or self.active_adapters:
            if name in self.r and name not in self.merged_adapters:
                self.lora_factors(name)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        try:
            self.lora_factors(adapter_name)
        except StaticWeightError:
            return False
        return True


class RoutedLayer(AdapterLayer):
    """ALoRA and HydraLoRA: stacked A (n_A*r x d_in), stacked B (d_out x n_B*r), router (n x d_in).

    `routed_side` is "A" (ALoRA) or "B" (HydraLoRA). A fixed gate (set_fixed_gate) replaces the
    router: it is kept in the persistent buffer `<prefix>gate` (all zeros: routed per token), so
    that it is saved and loaded with the adapter, and the router, then unused, is frozen."""

    routed_side: str = "A"
    parts = ("A", "B", "router")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "prefix" in cls.__dict__:
            cls.other_param_names = AdapterLayer.other_param_names + ("num_experts", "fixed_gate", cls.prefix + "gate")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        super().__init__(base_layer, **kwargs)
        self.num_experts: dict[str, int] = {}
        self.fixed_gate: dict[str, Optional[torch.Tensor]] = {}
        setattr(self, self.prefix + "gate", BufferDict(persistent=True))
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._read_saved_gates())
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
        self._saved_gates()[adapter_name] = torch.zeros(n)
        self.fixed_gate[adapter_name] = None
        self.set_fixed_gate(adapter_name, config.fixed_gate)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        super()._move_adapter_to_device_of_base_layer(adapter_name, device)
        saved = self._saved_gates()
        if adapter_name in saved and saved[adapter_name].device.type != "meta":
            saved[adapter_name] = saved[adapter_name].float()  # a gate is kept in float32 whatever the base

    def _saved_gates(self) -> BufferDict:
        return getattr(self, self.prefix + "gate")

    def set_fixed_gate(self, adapter_name: str, gate: Optional[Any]) -> None:
        """Route every token with this gate vector (n non-negative weights summing to 1) instead of the
        router; None restores routing. A fixed gate makes the update static, so the adapter can merge
        and export as plain LoRA. Refused while the adapter is merged (unmerge first)."""
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged into the base weights: unmerge it before "
                             "changing its gate")
        n = self.num_experts[adapter_name]
        fixed = None if gate is None else check_gate(gate, n, "fixed gate")
        saved = self._saved_gates()
        saved[adapter_name] = (torch.zeros(n) if fixed is None else fixed).to(saved[adapter_name].device)
        self.fixed_gate[adapter_name] = fixed
        self._freeze_unused_routers()

    def _read_saved_gates(self) -> None:
        """After a state dict was loaded: take the fixed gates it held."""
        for name, saved in self._saved_gates().items():
            if saved.device.type == "meta" or name not in self.num_experts:
                continue
            self.fixed_gate[name] = None if not saved.any() else check_gate(saved, self.num_experts[name], "saved gate")
        self._freeze_unused_routers()

    def _freeze_unused_routers(self) -> None:
        """A router that a fixed gate replaces gets no gradient: it is not trained; routing again
        trains it whenever the adapter's own factors are."""
        routers = getattr(self, self.prefix + "router")
        for name, W_g in routers.items():
            trainable = self._param("A", name).requires_grad and self.fixed_gate.get(name) is None
            W_g.requires_grad_(trainable)

    def set_adapter(self, adapter_names: Any, inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        self._freeze_unused_routers()

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
        """Per-token gates (..., n): the fixed gate, else the router's softmax. The one place gates
        are made (the forward and every recorder read them here), in the wider of float32 and x's dtype."""
        n = self.num_experts[adapter_name]
        dtype = torch.promote_types(x.dtype, torch.float32)
        fixed = self.fixed_gate.get(adapter_name)
        if fixed is not None:
            gates = fixed.to(x.device, dtype).expand(*x.shape[:-1], n)
        elif n == 1:
            gates = x.new_ones(*x.shape[:-1], 1, dtype=dtype)
        else:
            W_g = self.router_weight(adapter_name)
            gates = routed_gates(F.linear(self._cast_input_dtype(x, W_g.dtype), W_g), dtype)
        self._sink(adapter_name, gates)
        return gates

    def _sink(self, adapter_name: str, gates: torch.Tensor) -> None:
        if self.gate_sink is not None:
            self.gate_sink(self, adapter_name, gates.detach())

    def _fused(self, adapter_name: str, x: torch.Tensor) -> bool:
        """Whether ALoRA's one-node path (`routed_a.py`) computes this call: a routed ALoRA adapter
        with gradients on, one dtype throughout, no autocast (mixed precision takes the generic path),
        at least one token, and dropout that is nn.Dropout or none, with no hook reading its output."""
        W_g = self.router_weight(adapter_name)
        A = self._param("A", adapter_name)
        return (self.routed_side == "A" and W_g is not None and self.fixed_gate.get(adapter_name) is None
                and x.numel() > 0 and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)
                and x.dtype == A.dtype == W_g.dtype
                and type(self.lora_dropout[adapter_name]) in (nn.Dropout, nn.Identity)
                and not self.lora_dropout[adapter_name]._forward_hooks)  # an observer (the recorder) sees x

    def add_adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        if result.dtype == x.dtype and self._fused(adapter_name, x):   # _fused: x in the adapter's dtype
            return self._routed_a(adapter_name, x, base=result)
        return super().add_adapter_output(adapter_name, x, result)

    def _routed_a(self, adapter_name: str, x: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ALoRA's one-node path (`routed_a.py`), its gates handed to recorders."""
        out, gates = routed_a_output(x, self._param("A", adapter_name), self.router_weight(adapter_name),
                                     self._param("B", adapter_name), self.lora_dropout[adapter_name],
                                     self.scaling[adapter_name], torch.promote_types(x.dtype, torch.float32), base)
        self._sink(adapter_name, gates)
        return out

    def adapter_output(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        A, B = self._param("A", adapter_name), self._param("B", adapter_name)
        r, n = self.r[adapter_name], self.num_experts[adapter_name]
        x = self._cast_input_dtype(x, A.dtype)
        if self._fused(adapter_name, x):   # a router exists only for n > 1
            return self._routed_a(adapter_name, x)
        h = F.linear(self.lora_dropout[adapter_name](x), A)  # (..., n_A r): every A expert in one GEMM
        s = self.scaling[adapter_name]  # applied to the gates (or h): n (or r) columns, not d_out
        if n > 1:
            w = self.gate(x, adapter_name).to(h.dtype).unsqueeze(-1) * s  # (..., n, 1)
            if self.routed_side == "A":  # ALoRA: sum_i w_i A_i x, then the one shared B (r columns)
                h = (h.unflatten(-1, (n, r)) * w).sum(-2)
            else:  # HydraLoRA: the one A x weighted per head; the (d_out, n r) stack of B's sums the heads
                h = (h.unsqueeze(-2) * w).flatten(-2)
        else:
            h = h * s
        return F.linear(h, B)

    def lora_factors(self, adapter_name: str, gate: Optional[Any] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ALoRA: A_eff = sum_i w_i A_i with the shared B; HydraLoRA: B_eff = sum_i w_i B_i with the shared A."""
        n = self.num_experts[adapter_name]
        if gate is None:
            gate = self.fixed_gate.get(adapter_name)
        if gate is None:
            if n > 1:
                raise StaticWeightError(
                    f"adapter {adapter_name!r} routes each token; its update is static only at a fixed gate "
                    "(set one with set_fixed_gate, or pass a gate to export)"
                )
            gate = torch.ones(1)
        gate = check_gate(gate, n)
        A, B = self.experts_A(adapter_name), self.experts_B(adapter_name)
        w = gate.to(device=A.device, dtype=A.dtype)
        if self.routed_side == "A":
            return torch.einsum("n,nrd->rd", w, A), B[0]
        return A[0], torch.einsum("n,nor->or", w, B)


class ALoRALayer(RoutedLayer):
    prefix = "alora_"
    routed_side = "A"


class HydraLoRALayer(RoutedLayer):
    prefix = "hydralora_"
    routed_side = "B"


class MoSLoRALayer(AdapterLayer):
    """B M A with a trainable r x r mixer between the two factors."""

    prefix = "moslora_"
    parts = ("A", "M", "B")

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

    prefix = "declora_"
    parts = ("A", "M", "B", "A1", "A2", "B1", "B2")
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
