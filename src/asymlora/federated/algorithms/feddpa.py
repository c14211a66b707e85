"""FedDPA (Long et al., 2024): two LoRAs on the same layers, a global one averaged like FedIT
and a local, personal one that never leaves the client.

The two adapters are told apart by the adapter name inside the key, as a PEFT model's own
`state_dict()` spells it: `<module>.lora_A.global.weight` and `<module>.lora_A.local.weight`.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..keys import StateDict, describe_keys, parse_key
from .fedit import FedIT


class FedDPA(FedIT):
    name = "feddpa"

    def __init__(self, global_adapter: str = "global", local_adapter: str = "local") -> None:
        if global_adapter == local_adapter:
            raise ValueError(f"FedDPA needs two distinct adapter names, got {global_adapter!r} twice")
        self.adapter = global_adapter
        self.local_adapter = local_adapter

    def client_upload(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        if not any((p := parse_key(k)) is not None and p.adapter is not None for k in state):
            raise KeyError(
                f"feddpa: the client state names no adapters (keys like '<module>.lora_A.{self.adapter}"
                f".weight' are needed to tell the global LoRA from the local one); its keys: "
                f"{describe_keys(state) or 'none'}"
            )
        return super().client_upload(state)
