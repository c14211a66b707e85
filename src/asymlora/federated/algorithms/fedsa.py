"""FedSA-LoRA (Guo et al., 2025): only A is sent and averaged; each client's B stays local."""

from __future__ import annotations

from .fedit import FedIT


class FedSALoRA(FedIT):
    name = "fedsa"
    upload_roles = ("lora_A",)
