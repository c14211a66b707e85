"""FedIT (Zhang et al., 2024): every client sends its whole LoRA, A and B, and takes the average."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..keys import StateDict
from .base import FederatedMethod, fedavg, replace_from


class FedIT(FederatedMethod):
    name = "fedit"
    upload_roles = ("lora_A", "lora_B")

    def aggregate(self, uploads: Sequence[Mapping[str, torch.Tensor]], num_examples: Sequence[int]) -> StateDict:
        return fedavg(uploads, num_examples, self.name)

    def combinable(self) -> str:
        return ""

    def client_apply(self, state: Mapping[str, torch.Tensor], broadcast: Mapping[str, torch.Tensor]) -> StateDict:
        return replace_from(state, broadcast, self.name)
