"""FedDPA's instance-wise weighting applied to a PEFT model with a global and a local LoRA.

The arithmetic (representation -> similarity -> weights) is `algorithms.feddpa`; this module only
produces the representations with the frozen base model and makes each row of a batch use its
own pair of weights: a forward hook on every `lora_B[global]` and `lora_B[local]` scales that
adapter's output row by row (PEFT's LoRA layer adds `lora_B(lora_A(x)) * scaling`, so scaling
`lora_B`'s output scales exactly that adapter's update), and a wrapper around `model.generate`
computes the weights from the prompts it is given. The generation code stays unaware of it,
however it sorts, pads or batches the prompts.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ..data.records import Example
from ..data.templates import Template
from ..data.tokenize import MultiTaskCollator, encode_prompt
from .algorithms.feddpa import DEFAULT_SIMILARITY_SCALE, TRAINING_WEIGHTS, instance_weights, pool_prompt

REPRESENTATION = "mean-last-hidden-state-of-the-prompt-under-the-frozen-base"


def prompt_representations(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, hidden): the pooled last hidden state of each prompt under the frozen base model.

    Positions are counted from each row's first real token, so a left-padded prompt gets the same
    representation as the prompt alone."""
    from ..evaluate.generate import eval_mode

    attention_mask = attention_mask.to(input_ids.device)
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    disable = model.disable_adapter() if hasattr(model, "disable_adapter") else _nothing()
    grads = [(p, p.requires_grad) for p in model.parameters()]  # PEFT's re-enabling marks adapters trainable
    try:
        with eval_mode(model), disable:
            if decoder is not None:   # the decoder alone: no vocabulary-sized logits to compute
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False).last_hidden_state
            else:
                hidden = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              output_hidden_states=True, use_cache=False).hidden_states[-1]
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
    return pool_prompt(hidden, attention_mask).cpu()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def reference_representations(model: Any, tokenizer: Any, template: Template, examples: Sequence[Example],
                              batch_size: int = 8) -> torch.Tensor:
    """(K, hidden): the representations of the local sample's prompts (no response), as at test time."""
    if not examples:
        raise ValueError("no local examples to represent")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    collate = MultiTaskCollator(int(pad), padding_side="left", return_task_ids=False)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(examples), batch_size):
        enc = collate([{"input_ids": encode_prompt(tokenizer, template, ex)} for ex in examples[i:i + batch_size]])
        out.append(prompt_representations(model, enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    return torch.cat(out)


def dual_lora_layers(model: torch.nn.Module, global_adapter: str, local_adapter: str) -> list[tuple[str, Any]]:
    """(name, module) of every LoRA layer that holds both adapters."""
    found = []
    for name, module in model.named_modules():
        heads = getattr(module, "lora_B", None)
        if isinstance(heads, torch.nn.ModuleDict) and global_adapter in heads and local_adapter in heads:
            found.append((name, module))
    if not found:
        raise ValueError(f"the model has no LoRA layer with both adapters {global_adapter!r} and {local_adapter!r}")
    return found


class InstanceAdapterWeights:
    """While active, row i of every batch uses `weights[i] = (w_global, w_local)` for the two adapters.

    `set(weights)` fixes the weights of the next forward calls (None: the training weights, i.e.
    PEFT's plain sum). With `references` given, `model.generate` is wrapped: each call first
    computes its prompts' weights from their similarity to the references (`instance_weights`),
    and every weight it used is kept in `local_weights` (for the run's record).
    """

    def __init__(self, model: Any, references: Optional[torch.Tensor] = None, *,
                 scale: float = DEFAULT_SIMILARITY_SCALE, global_adapter: str = "global",
                 local_adapter: str = "local") -> None:
        self.model = model
        self.references = references
        self.scale = float(scale)
        self.adapters = (global_adapter, local_adapter)
        self.layers = dual_lora_layers(model, global_adapter, local_adapter)
        self._weights: Optional[torch.Tensor] = None
        self._handles: list[Any] = []
        self._wrapped = False
        self.local_weights: list[torch.Tensor] = []

    # ---- weights -----------------------------------------------------------------------
    def set(self, weights: Optional[torch.Tensor]) -> None:
        if weights is not None:
            if weights.dim() != 2 or weights.shape[1] != 2:
                raise ValueError(f"weights must be (batch, 2) = (global, local) per row, got {tuple(weights.shape)}")
            if not bool(torch.isfinite(weights).all()):
                raise ValueError("weights hold NaN or Inf values")
        self._weights = weights

    def weights_for(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.references is None:
            raise ValueError("no reference representations were given: per-instance weights cannot be computed")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        reps = prompt_representations(self.model, input_ids, attention_mask)
        return instance_weights(reps, self.references, self.scale, TRAINING_WEIGHTS)

    def _hook(self, column: int):
        def scale_rows(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
            w = self._weights
            if w is None:
                return None
            if output.shape[0] != w.shape[0]:
                raise RuntimeError(f"FedDPA weighting: a batch of {output.shape[0]} rows but weights for "
                                   f"{w.shape[0]} instances (beam search is not supported)")
            col = w[:, column].to(device=output.device, dtype=output.dtype)
            return output * col.view(-1, *([1] * (output.dim() - 1)))
        return scale_rows

    def _generate(self, original: Any):
        def generate(*args: Any, **kwargs: Any) -> Any:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is None:
                raise ValueError("FedDPA weighting needs generate(input_ids=...)")
            w = self.weights_for(input_ids, kwargs.get("attention_mask"))
            self.local_weights.append(w[:, 1].detach().cpu())
            self.set(w)
            try:
                return original(*args, **kwargs)
            finally:
                self.set(None)
        return generate

    # ---- context -----------------------------------------------------------------------
    def __enter__(self) -> "InstanceAdapterWeights":
        for _, layer in self.layers:
            for column, adapter in enumerate(self.adapters):
                self._handles.append(layer.lora_B[adapter].register_forward_hook(self._hook(column)))
        if self.references is not None:
            self.model.generate = self._generate(self.model.generate)
            self._wrapped = True
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._wrapped:
            del self.model.generate
            self._wrapped = False
        self._weights = None

    def summary(self) -> dict[str, float]:
        """The local adapter's weight over every instance generated for (mean, min, max, count)."""
        if not self.local_weights:
            return {}
        w = torch.cat(self.local_weights)
        return {"mean": float(w.mean()), "min": float(w.min()), "max": float(w.max()), "count": float(w.numel())}


def client_references(client: Any, size: int) -> torch.Tensor:
    """(K, hidden): FedDPA's stored sample of a client's training prompts, represented by the frozen
    base model. Computed once (the base never changes) from a seeded sample and kept in the client's
    private directory; it never leaves the node."""
    from ..data.templates import get_template
    from .client import ClientStateError, atomic_save, generator, read_safetensors

    cached = getattr(client, "_feddpa_references", None)
    if cached is not None:
        return cached
    path = client.store.root / "feddpa_reference.safetensors"
    train, _ = client.examples()
    k = min(int(size), len(train))
    chosen = sorted(torch.randperm(len(train), generator=generator(client.cfg.seed, client.client_id, 7))[:k].tolist())
    settings = {"representation": REPRESENTATION, "model": client.cfg.model, "template": client.cfg.training.template,
                "examples": [train[i].id for i in chosen]}
    if path.exists():
        tensors, meta = read_safetensors(path)
        if meta.get("identity") != client.store.identity:
            raise ClientStateError(
                f"{path} belongs to another run or client ({meta.get('identity')}), not to "
                f"{client.store.identity}; point state_dir elsewhere or delete it")
        if meta.get("settings") == settings and "references" in tensors:
            client._feddpa_references = tensors["references"]
            return client._feddpa_references
    model = client.live_model()
    refs = reference_representations(model, client.tokenizer, get_template(client.cfg.training.template, client.tokenizer),
                                     [train[i] for i in chosen], batch_size=client.cfg.evaluation.batch_size)
    atomic_save({"references": refs}, path, {"identity": client.store.identity, "settings": settings})
    client._feddpa_references = refs
    return refs
