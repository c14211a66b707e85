"""FedDPA (Long et al., 2024): two LoRAs on the same layers, a global one averaged like FedIT
and a local, personal one that never leaves the client.

The two adapters are told apart by the adapter name inside the key, as a PEFT model's own
`state_dict()` spells it: `<module>.lora_A.global.weight` and `<module>.lora_A.local.weight`.

At inference FedDPA weights the two adapters per test instance ("instance-wise dynamic
weighting"): an instance that looks like the client's own training data leans on the personal
adapter, one that does not leans on the global adapter. The arithmetic of that weighting is here,
in plain torch; `asymlora.federated.feddpa_inference` applies it to a PEFT model.

Our exact choice (SPEC §2 leaves it open; see also docs/federated.md):

- h(x): the masked mean, over the prompt's tokens, of the frozen base model's last hidden state
  (adapters off). The mean rather than the last token because every prompt of a template ends in
  the same closing tokens ("### Response:"), which would dominate a last-token representation;
  the frozen base rather than the adapted model so that the local sample's representations never
  change from round to round (computed once, stored node-local) and the weight does not depend on
  the adapters it chooses between.
- alpha(x) = s * max(0, (1/K) sum_j cos(h(x), h(x_j))), x_1..x_K a stored sample of the client's
  training prompts, s = 0.5 by default. This is the FedDPA authors' rule (the mean cosine
  similarity to local instances, halved in their released code). A negative mean similarity is
  clipped to 0: a negative weight would subtract the personal update, which the method never asks
  for.
- The pair (global, local) = (a_g + a_l) * (1 - alpha, alpha). The authors mix the adapters
  convexly and train them at (0.5, 0.5); our local training sums them at (a_g, a_l) = (1, 1)
  (`TRAINING_WEIGHTS`), so the convex pair is scaled by a_g + a_l = 2 to keep the adapters'
  total weight what it was in training. With s = 0.5 an instance exactly like the local data
  (cos = 1) gets the training weights (1, 1); the less alike, the more the global adapter takes
  over, up to (2, 0).
"""

from __future__ import annotations

from typing import Any, ContextManager, Mapping, Optional, Sequence

import torch

from ..keys import StateDict, describe_keys, parse_key
from .base import AdapterSpec, lora_config
from .fedit import FedIT

TRAINING_WEIGHTS: tuple[float, float] = (1.0, 1.0)
"""(global, local) weights of the two adapters in local training: PEFT sums active adapters."""

WEIGHTINGS: tuple[str, ...] = ("dynamic", "fixed")
"""FedDPA at evaluation: per-instance weights, or `TRAINING_WEIGHTS` for every instance."""

DEFAULT_SIMILARITY_SCALE = 0.5


class FedDPA(FedIT):
    name = "feddpa"

    def __init__(self, global_adapter: str = "global", local_adapter: str = "local", weighting: str = "dynamic",
                 similarity_scale: float = DEFAULT_SIMILARITY_SCALE, reference_size: int = 16) -> None:
        if global_adapter == local_adapter:
            raise ValueError(f"FedDPA needs two distinct adapter names, got {global_adapter!r} twice")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"feddpa weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        self.adapter = global_adapter
        self.local_adapter = local_adapter
        self.weighting = weighting
        self.similarity_scale = float(similarity_scale)
        self.reference_size = int(reference_size)

    def build_model(self, base: torch.nn.Module, spec: AdapterSpec) -> Any:
        """Both LoRAs on the same layers, active together (PEFT sums them: `TRAINING_WEIGHTS`)."""
        from peft import get_peft_model

        model = get_peft_model(base, lora_config(spec), adapter_name=self.adapter)
        model.add_adapter(self.local_adapter, lora_config(spec))
        model.base_model.set_adapter([self.adapter, self.local_adapter])
        return model

    def training_phases(self, trainable: Sequence[str]) -> list[list[str]]:
        """The global adapter, then the personal one, each with the other's output frozen."""
        return [[k for k in trainable if parse_key(k).adapter == name] for name in (self.adapter, self.local_adapter)]

    def evaluation_context(self, client: Any) -> ContextManager[Optional[Any]]:
        """Dynamic weighting: each test instance weights the two adapters by its similarity to a stored
        sample of the client's own training prompts (module docstring)."""
        if self.weighting != "dynamic":
            return super().evaluation_context(client)
        from ..feddpa_inference import InstanceAdapterWeights, client_references

        references = client_references(client, self.reference_size)
        return InstanceAdapterWeights(client.live_model(), references, scale=self.similarity_scale)

    def client_upload(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        if not any((p := parse_key(k)) is not None and p.adapter is not None for k in state):
            raise KeyError(
                f"feddpa: the client state names no adapters (keys like '<module>.lora_A.{self.adapter}"
                f".weight' are needed to tell the global LoRA from the local one); its keys: "
                f"{describe_keys(state) or 'none'}"
            )
        return super().client_upload(state)


# ---- instance-wise dynamic weighting ---------------------------------------------------------
def pool_prompt(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, h) hidden states -> (batch, h): the mean over the tokens the mask keeps, so
    padding (either side) never enters a representation."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden states must be (batch, seq, hidden), got shape {tuple(hidden.shape)}")
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention mask has shape {tuple(attention_mask.shape)}, the hidden states "
                         f"{tuple(hidden.shape[:2])} (batch, seq)")
    mask = attention_mask.to(dtype=torch.float32, device=hidden.device)
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        empty = [int(i) for i in torch.nonzero(counts == 0).flatten()]
        raise ValueError(f"rows {empty} have no unmasked token to pool")
    summed = (hidden.to(torch.float32) * mask.unsqueeze(-1)).sum(dim=1)
    return summed / counts.unsqueeze(-1)


def mean_cosine_similarity(queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(n, h), (K, h) -> (n,): each query's cosine similarity to every reference, averaged."""
    if queries.dim() != 2 or references.dim() != 2:
        raise ValueError(f"expected (n, hidden) queries and (K, hidden) references, got shapes "
                         f"{tuple(queries.shape)} and {tuple(references.shape)}")
    if references.shape[0] == 0:
        raise ValueError("no reference representations: the client's local sample is empty")
    if queries.shape[1] != references.shape[1]:
        raise ValueError(f"hidden size differs: queries have {queries.shape[1]}, the stored references "
                         f"{references.shape[1]} (were they computed with another base model?)")
    for name, t in (("queries", queries), ("references", references)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} hold NaN or Inf values")
    q = torch.nn.functional.normalize(queries.to(torch.float32), dim=-1)
    r = torch.nn.functional.normalize(references.to(device=queries.device, dtype=torch.float32), dim=-1)
    return (q @ r.T).mean(dim=1)


def local_weight(queries: torch.Tensor, references: torch.Tensor,
                 scale: float = DEFAULT_SIMILARITY_SCALE) -> torch.Tensor:
    """alpha(x) = scale * max(0, mean_j cos(h(x), h(x_j))), in [0, scale], one per query."""
    if not 0.0 <= float(scale) <= 1.0:
        raise ValueError(f"the similarity scale must be in [0, 1], got {scale!r}")
    return float(scale) * mean_cosine_similarity(queries, references).clamp(min=0.0)


def instance_weights(queries: torch.Tensor, references: torch.Tensor,
                     scale: float = DEFAULT_SIMILARITY_SCALE,
                     training_weights: tuple[float, float] = TRAINING_WEIGHTS) -> torch.Tensor:
    """(n, 2): each instance's (global, local) adapter weights, (a_g + a_l) * (1 - alpha, alpha)."""
    total = float(sum(training_weights))
    if total <= 0:
        raise ValueError(f"training weights must sum to a positive number, got {training_weights!r}")
    alpha = local_weight(queries, references, scale)
    return torch.stack([total * (1.0 - alpha), total * alpha], dim=1)
