"""Fed-ALoRA, homogeneous ranks: only B is sent and averaged; each client keeps its own A,
which it goes on training from round to round and which the server never sees (SPEC §2; the
authors' code resets A every round, SPEC §5, which we do not copy)."""

from __future__ import annotations

from .fedit import FedIT


class FedALoRA(FedIT):
    name = "fedalora"
    upload_roles = ("lora_B",)
