"""Multi-task fine-tuning on Transformers' `Trainer`.

Mixed precision, gradient accumulation, `accelerate launch` / `torchrun`, checkpoints, resume and
`report_to` all come from the library; this module adds only what multi-task adapters need: a
task-mixing sampler with a deterministic order (so a resumed run sees the same batches), removal of
`task_ids` before the model's forward, AdaLoRA's per-step rank allocation, a guard against resuming
another method's checkpoint, and a `run.json` beside the saved adapter. Two opt-in speed-ups keep the
loss of the plain path: `packing` (rows of several examples, no attention across them) and
`loss_chunk_size` (logits only where there are labels, a chunk at a time; see `loss.py`).

Layout of `out_dir`: `checkpoints/checkpoint-<step>/` (the Trainer's), `adapter/` (the final adapter,
safetensors), `run.json` (method, adapter and training settings, data, seed, metrics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ..data.records import Example
from ..data.tokenize import MultiTaskCollator, PackingCollator, TaskMixSampler, tokenize_examples
from ..files import to_jsonable, write_json_atomic
from .config import ConfigError, TrainConfig
from .loss import install_chunked_loss
from .methods import METHOD_LABELS, make_peft_config

__all__ = [
    "CheckpointMismatchError",
    "TrainResult",
    "MultiTaskTrainer",
    "AdaLoraAllocationCallback",
    "train",
    "fit_features",
    "FitOutcome",
    "load_trained",
    "read_run",
    "data_fingerprint",
    "heldout_loss",
    "resolve_precision",
]

RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"

# Settings that change the trajectory of a run: a resumed run must use the same ones.
_TRAJECTORY_KEYS = ("learning_rate", "batch_size", "grad_accum", "cutoff_len", "warmup_steps", "weight_decay",
                    "lr_scheduler", "max_grad_norm", "seed", "sampling", "temperature", "template",
                    "train_on_prompt")
# Adapter settings that fix the shapes of its tensors.
_SHAPE_KEYS = ("peft_type", "r", "lora_alpha", "alpha", "num_experts", "target_modules", "init_r", "target_r")


class CheckpointMismatchError(ValueError):
    """A checkpoint (or run directory) belongs to another method or other settings."""


@dataclass
class TrainResult:
    """What `train` gives back: the trained PeftModel and the Trainer's log history, plus where the
    adapter was saved and the run record written beside it."""

    model: Any
    tokenizer: Any
    log_history: list[dict[str, Any]]
    adapter_dir: Path
    run: dict[str, Any]
    task_names: list[str] = field(default_factory=list)


class MultiTaskTrainer(Trainer):
    """`Trainer` that mixes tasks with a seeded `TaskMixSampler` and never passes `task_ids` to
    the model (Llama's forward would reject it)."""

    def __init__(self, *args: Any, sampling: str = "proportional", temperature: Optional[float] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampling = sampling
        self.temperature = temperature

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        task_ids = [int(f["task_id"]) for f in dataset]
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return TaskMixSampler(task_ids, self.sampling, seed=seed, temperature=self.temperature)

    def compute_loss(self, model: Any, inputs: Mapping[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs = {k: v for k, v in inputs.items() if k != "task_ids"}
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model: Any, inputs: Mapping[str, Any], prediction_loss_only: bool,
                        ignore_keys: Any = None) -> Any:
        inputs = {k: v for k, v in inputs.items() if k != "task_ids"}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


class AdaLoraAllocationCallback(TrainerCallback):
    """AdaLoRA re-allocates ranks from gradient-based importance after every optimiser step, while
    the gradients still exist (PEFT's `update_and_allocate`); the Trainer does not do it by itself."""

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if model is not None:
            model.base_model.update_and_allocate(state.global_step)
        return control


class _RunRecordAtStart(TrainerCallback):
    """Writes the 'running' record once training starts, from the main process only: by then every
    process of a multi-process launch has passed the checks on the output directory."""

    def __init__(self, path: Path, run: dict[str, Any]) -> None:
        self.path, self.run = path, run

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            write_json_atomic(self.path, self.run)
        return control


def _quantised_loading(config: TrainConfig) -> dict[str, Any]:
    """load_model's quantisation arguments for `config` (none for a full-precision base)."""
    if not config.quantization:
        return {}
    compute = config.bnb_4bit_compute_dtype
    compute = resolve_precision(config.precision) if compute == "auto" else compute
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return {"quantization": config.quantization, "compute_dtype": dtypes[compute]}


def resolve_precision(precision: str) -> str:
    """auto -> bf16 on a GPU that has it, fp16 on an older GPU, fp32 on the CPU (the CPUs here have
    no bf16 instructions: bf16 was 40x slower)."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def data_fingerprint(examples: Sequence[Example]) -> str:
    """A hash of the training data's content, for run records and baseline caching."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(dataclasses.astuple(ex), ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _peft_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict(), default=to_jsonable))


def read_run(out_dir: Union[str, Path]) -> dict[str, Any]:
    """The run record of a training directory (or of the adapter directory inside it)."""
    out = Path(out_dir)
    for candidate in (out / RUN_FILE, out.parent / RUN_FILE):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{candidate}: not valid JSON ({exc})") from exc
    raise FileNotFoundError(f"no {RUN_FILE} in {out} or its parent: not a directory written by asymlora train")


def _last_checkpoint(ckpt_root: Path) -> Optional[Path]:
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_root.is_dir():
        return None
    last = get_last_checkpoint(str(ckpt_root))
    return Path(last) if last else None


def _check_checkpoint(ckpt: Path, peft_config: Any, method: str) -> None:
    """Refuse a checkpoint written for another method or other adapter shapes, before the Trainer
    tries to load it and fails with a tensor-name error."""
    cfg_file = ckpt / "adapter_config.json"
    if not cfg_file.is_file():
        raise CheckpointMismatchError(f"{ckpt}: no adapter_config.json, not an adapter checkpoint of asymlora train")
    saved = json.loads(cfg_file.read_text(encoding="utf-8"))
    want = _peft_dict(peft_config)
    if saved.get("peft_type") != want.get("peft_type"):
        raise CheckpointMismatchError(
            f"{ckpt} is a checkpoint of peft_type {saved.get('peft_type')!r}, but this run trains "
            f"{method!r} (peft_type {want.get('peft_type')!r}); use another output directory")
    diff = []
    for key in _SHAPE_KEYS:
        a, b = saved.get(key), want.get(key)
        if isinstance(a, list) and isinstance(b, list):
            a, b = sorted(a), sorted(b)
        if a != b:
            diff.append(f"{key}: checkpoint {a!r} vs run {b!r}")
    if diff:
        raise CheckpointMismatchError(f"{ckpt} was written with other adapter settings: " + "; ".join(diff))


def _check_previous_run(out: Path, method: str, config: TrainConfig) -> None:
    path = out / RUN_FILE
    if not path.is_file():
        return
    prev = read_run(out)
    if prev.get("method") != method:
        raise CheckpointMismatchError(
            f"{out} holds a run of method {prev.get('method')!r}; this run trains {method!r}: "
            "use another output directory")
    old = prev.get("training", {})
    diff = [f"{k}: {old.get(k)!r} -> {getattr(config, k)!r}" for k in _TRAJECTORY_KEYS
            if k in old and old[k] != getattr(config, k)]
    if diff:
        raise CheckpointMismatchError(f"{out}: resuming with different settings would not continue the same run: "
                                      + "; ".join(diff))


def _optimizer_steps(n_examples: int, config: TrainConfig) -> int:
    """Optimiser steps the Trainer will take (AdaLoRA's schedule needs the number up front)."""
    if config.max_steps > 0:
        return config.max_steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batches = math.ceil(n_examples / (config.batch_size * world))
    per_epoch = batches // config.grad_accum + int(batches % config.grad_accum > 0)
    return max(1, math.ceil(config.num_epochs * per_epoch))


def _training_arguments(config: TrainConfig, ckpt_root: Path, save: bool = True) -> TrainingArguments:
    precision = resolve_precision(config.precision)
    args: dict[str, Any] = dict(
        output_dir=str(ckpt_root),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        save_strategy="steps" if save else "no",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to=config.report_to,
        disable_tqdm=not config.progress,
        torch_compile=config.torch_compile,
        remove_unused_columns=False,  # our collator adds task_ids; the trainer drops them itself
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # without it, a CPU-only `torchrun` launch trains the whole data set in every process
        use_cpu=not torch.cuda.is_available() and not torch.backends.mps.is_available(),
    )
    if config.gradient_checkpointing:
        args["activation_checkpointing"] = True
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(config.extra_args) - known)
    if unknown:
        raise ConfigError(f"training.extra_args: unknown TrainingArguments field(s) {unknown}")
    args.update(config.extra_args)
    return TrainingArguments(**args)


@dataclass
class FitOutcome:
    """What `fit_features` gives back: the Trainer's log history, steps, mean loss and time."""

    log_history: list[dict[str, Any]]
    global_step: int
    loss: float
    seconds: float
    metrics: dict[str, Any]
    should_save: bool = True


def attention_positions(model: Any) -> Optional[float]:
    """Row length at which a token's attention costs as much as its linear layers: the packing
    collator weighs longer rows by it. Linear work per token and layer is about the layer's weight
    count; attention's is 2 x width per position attended (scores and values). None if unknown."""
    config = getattr(model, "config", None)
    width, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not width or not layers or not hasattr(base, "get_input_embeddings"):
        return None
    skip = {id(p) for m in (base.get_input_embeddings(), base.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    body = sum(p.numel() for p in base.parameters() if id(p) not in skip)
    return body / layers / (2 * width) if body else None


def fit_features(model: Any, tokenizer: Any, features: Sequence[Mapping[str, Any]], config: TrainConfig,
                 output_dir: Union[str, Path], *, callbacks: Sequence[TrainerCallback] = (),
                 checkpoint: Optional[Path] = None, save_checkpoints: bool = True,
                 print_logs: bool = True) -> FitOutcome:
    """Train the parameters of `model` (a PeftModel) that require grad on tokenised `features`
    with the Trainer: the one training path of `asymlora train` and of a federated client's round.

    The collator (packed or padded), the chunked loss, mixed precision, gradient checkpointing,
    compile, the lr schedule and `report_to` all follow `config`; checkpoints go to `output_dir`
    unless `save_checkpoints` is False (a federated round keeps its own state). `print_logs` False
    keeps the logs off stdout when there is no progress bar (they stay in the log history)."""
    attn = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    if config.packing and "flash" in attn:
        # flash kernels read packed boundaries from position_ids only for a single row
        raise ConfigError(f"packing needs sdpa, eager or flex_attention; the model uses {attn!r}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token (set it to the eos token)")
    training_args = _training_arguments(config, Path(output_dir), save=save_checkpoints)
    if config.loss_chunk_size and training_args.n_gpu > 1:
        raise ConfigError("loss_chunk_size with several GPUs in one process (DataParallel) would scale the loss "
                          "by the GPU count: launch one process per GPU (torchrun / accelerate launch)")
    if config.gradient_checkpointing and not getattr(model, "_asymlora_input_grads", False):
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
        model._asymlora_input_grads = True
    collator = (PackingCollator(tokenizer.pad_token_id, config.cutoff_len,
                                attention_positions=attention_positions(model)) if config.packing
                else MultiTaskCollator(tokenizer.pad_token_id))
    loss_func, restore_head = None, None
    try:
        if config.loss_chunk_size:
            amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(config.precision))
            loss_func, restore_head = install_chunked_loss(model, config.loss_chunk_size, autocast_dtype=amp)
        trainer = MultiTaskTrainer(
            model=model,
            args=training_args,
            train_dataset=list(features),
            data_collator=collator,
            callbacks=list(callbacks),
            sampling=config.sampling,
            temperature=config.temperature,
            compute_loss_func=loss_func,
        )
        if not print_logs:
            trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - started
    finally:
        if restore_head is not None:
            restore_head()  # the returned model generates with its real LM head
    return FitOutcome(list(trainer.state.log_history), int(trainer.state.global_step), float(output.training_loss),
                      seconds, dict(output.metrics), bool(trainer.args.should_save))


def train(
    model_name_or_model: Any,
    tokenizer: Any,
    train_examples: Sequence[Example],
    method: str,
    out_dir: Union[str, Path],
    config: Optional[TrainConfig] = None,
    adapter: Optional[Mapping[str, Any]] = None,
    resume: Union[bool, str, Path] = False,
    callbacks: Sequence[TrainerCallback] = (),
    task_names: Optional[Sequence[str]] = None,
    data_info: Optional[Mapping[str, Any]] = None,
    **overrides: Any,
) -> TrainResult:
    """Fine-tune `method` on the mixed examples of every task and save the adapter.

    `model_name_or_model`: a base model (not yet a PeftModel) or a name for `asymlora.models.load_model`
    (then `tokenizer` may be None). `adapter`: overrides for `make_peft_config` (r, target_modules...).
    `config` and `overrides` (TrainConfig fields) set the hyper-parameters. `resume=True` continues from
    the last checkpoint in `out_dir` when there is one; a path resumes from that checkpoint.
    """
    from peft import PeftModel

    from ..adapters.registry import get_peft_model
    from ..models import load_model

    config = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    method = method.lower()
    out = Path(out_dir)
    ckpt_root = out / CHECKPOINT_DIR
    examples = list(train_examples)
    if not examples:
        raise ValueError("no training examples")

    if method not in METHOD_LABELS:
        raise ValueError(f"unknown method {method!r}; known methods: {sorted(METHOD_LABELS)}")
    if method == "adalora" and config.loss_chunk_size:
        raise ConfigError("loss_chunk_size is not available with adalora: PEFT adds AdaLoRA's orthogonality "
                          "penalty to the model's own loss (set loss_chunk_size: 0)")
    # checks on the output folder come first: they are cheap, loading a model is not
    if resume:
        _check_previous_run(out, method, config)
    elif _last_checkpoint(ckpt_root) is not None or (out / RUN_FILE).is_file():
        raise FileExistsError(f"{out} already holds a training run; pass resume=True (--resume) to continue "
                              "it, or choose a new output directory")

    if isinstance(model_name_or_model, (str, os.PathLike)):
        model_name = str(model_name_or_model)
        model, loaded_tok = load_model(model_name, device="cuda" if torch.cuda.is_available() else None,
                                       **_quantised_loading(config))
        tokenizer = tokenizer or loaded_tok
    else:
        if config.quantization:
            raise ConfigError("load_in_4bit / load_in_8bit quantise a base loaded by name; this one is an object "
                              "(load it quantised yourself)")
        model = model_name_or_model
        model_name = getattr(getattr(model, "config", None), "_name_or_path", "") or None
    if isinstance(model, PeftModel):
        raise TypeError("train() adds the adapter itself: pass the base model, not a PeftModel")
    if tokenizer is None:
        raise ValueError("a tokenizer is needed when the model is given as an object")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    features, names = tokenize_examples(examples, tokenizer, config.template, config.cutoff_len,
                                        config.train_on_prompt, task_names=task_names)
    if not features:
        raise ValueError(f"every one of the {len(examples)} examples lost its response to cutoff_len="
                         f"{config.cutoff_len}: nothing to learn")

    adapter = dict(adapter or {})
    if method in ("alora", "hydralora", "moslora"):
        adapter.setdefault("init_seed", config.seed)
    if method == "adalora":
        adapter.setdefault("total_step", _optimizer_steps(len(features), config))
    peft_config = make_peft_config(method, **adapter)

    checkpoint: Optional[Path] = None
    if resume:
        checkpoint = Path(resume) if isinstance(resume, (str, Path)) else _last_checkpoint(ckpt_root)
        if checkpoint is not None:
            if not checkpoint.is_dir():
                raise FileNotFoundError(f"checkpoint directory not found: {checkpoint}")
            _check_checkpoint(checkpoint, peft_config, method)

    from transformers import set_seed

    set_seed(config.seed)  # PEFT's own adapters draw their initial weights from the global generator
    if getattr(model, "is_quantized", False):  # QLoRA's preparation: norms in float32, input gradients
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    model = get_peft_model(model, peft_config, adapter_dtype=config.adapter_dtype)

    run: dict[str, Any] = {
        "method": method,
        "method_label": METHOD_LABELS.get(method, method),
        "model": model_name,
        "adapter_config": _peft_dict(peft_config),
        "training": config.to_dict(),
        "seed": config.seed,
        "data": {
            "n_examples": len(examples),
            "n_trained": len(features),
            "tasks": {t: sum(1 for ex in examples if ex.task == t) for t in names},
            "fingerprint": data_fingerprint(examples),
            **dict(data_info or {}),
        },
        "task_names": names,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "status": "running",
    }
    cbs = [_RunRecordAtStart(out / RUN_FILE, run), *callbacks]
    if method == "adalora":
        cbs.append(AdaLoraAllocationCallback())
    fit = fit_features(model, tokenizer, features, config, ckpt_root, callbacks=cbs, checkpoint=checkpoint)
    adapter_dir = out / ADAPTER_DIR
    run.update(
        status="done",
        resumed_from=str(checkpoint) if checkpoint else None,
        metrics={**fit.metrics, "global_step": fit.global_step, "wall_seconds": fit.seconds},
        log_history=fit.log_history,
    )
    if fit.should_save:
        model.save_pretrained(str(adapter_dir), safe_serialization=True)
        write_json_atomic(out / RUN_FILE, run)
    return TrainResult(model, tokenizer, fit.log_history, adapter_dir, run, names)


def load_trained(adapter_dir: Union[str, Path], base_model: Any = None, tokenizer: Any = None) -> tuple[Any, Any, dict]:
    """(PeftModel, tokenizer, run record) from a directory written by `train` (its `adapter/`
    folder or the run folder). The base model is loaded by the name recorded in run.json unless
    given, quantised as it was in training; weights are read from safetensors only."""
    from ..adapters.registry import load_adapter
    from ..models import load_model

    path = Path(adapter_dir)
    if (path / ADAPTER_DIR / "adapter_config.json").is_file():
        path = path / ADAPTER_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory not found: {path}")
    try:
        run = read_run(path)
    except FileNotFoundError:
        run = {}
    if base_model is None:
        name = run.get("model")
        if not name:
            cfg = json.loads((path / "adapter_config.json").read_text()) if (path / "adapter_config.json").is_file() else {}
            name = cfg.get("base_model_name_or_path")
        if not name:
            raise ValueError(f"{path}: no base model recorded; pass the base model explicitly")
        quant_keys = ("precision", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype")
        recorded = TrainConfig.from_dict({k: v for k, v in run.get("training", {}).items() if k in quant_keys})
        base_model, loaded_tok = load_model(name, device="cuda" if torch.cuda.is_available() else None,
                                            **_quantised_loading(recorded))  # the base it was trained on
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ValueError("a tokenizer is needed when the base model is given as an object")
    model = load_adapter(base_model, str(path))
    return model, tokenizer, run


@torch.no_grad()
def heldout_loss(model: Any, tokenizer: Any, examples: Sequence[Example], template: Any = None,
                 cutoff_len: int = 256, batch_size: int = 8, progress: bool = False) -> tuple[float, dict[str, float]]:
    """Mean next-token loss on the response tokens of `examples` (overall and per task), in eval mode:
    the number a demo shows before and after training."""
    from ..evaluate.generate import eval_mode

    if not examples:
        raise ValueError("no examples to compute a loss on")
    features, names = tokenize_examples(examples, tokenizer, template, cutoff_len)
    collate = MultiTaskCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    sums = torch.zeros(len(names), dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.float64)
    batches = range(0, len(features), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="loss", unit="batch")
    with eval_mode(model):
        for i in batches:
            batch = collate(features[i:i + batch_size])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits.float()
            labels = batch["labels"].to(device)[:, 1:]
            tok_loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none")
            mask = (labels != -100).double()
            per_row = (tok_loss.double() * mask).sum(1).cpu()
            n_row = mask.sum(1).cpu()
            sums.index_add_(0, batch["task_ids"], per_row)
            counts.index_add_(0, batch["task_ids"], n_row)
    per_task = {t: float(sums[j] / counts[j]) for j, t in enumerate(names) if counts[j] > 0}
    return float(sums.sum() / counts.sum()), per_task
