"""CLI subcommands of the training area: demo, train, evaluate, compare, export.

`register(subparsers)` adds them to an argparse parser; each handler takes the parsed arguments and
returns an exit code. Mistakes in the input (a missing file, a bad key, a wrong gate) raise; `asymlora.cli`
turns them into one line on stderr and exit code 2 (`--traceback` shows the whole traceback).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from ..files import write_json_atomic

__all__ = ["register"]


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


# ---------------------------------------------------------------- data from the command line


def _add_data_args(p: argparse.ArgumentParser, required_hint: str) -> None:
    p.add_argument("--data", action="append", default=[], metavar="[TASK=]FILE",
                   help=f"a JSON/JSONL file of records ({required_hint}); TASK= names the task of every record, "
                        "otherwise each record's task/category field is used. Repeat for several files")
    p.add_argument("--data-dir", help="a folder in the FLAN (local_training_*.json + test.jsonl) or "
                                      "LLM-Adapters (<task>/train.json, test.json) layout")
    p.add_argument("--tasks", type=_csv, help="keep only these tasks (comma-separated)")
    p.add_argument("--format", default="auto", help="record format: auto, llm_adapters, flan, dolly")
    p.add_argument("--max-per-task", type=int, help="use at most this many examples of each task")


def _examples(args: argparse.Namespace, split: str) -> list:
    from ..data.records import check_unique_ids, load_examples, load_task_dir
    from .compare import _subsample

    examples = []
    for spec in args.data:
        task, sep, path = spec.partition("=")
        if not sep or "/" in task or not task:
            task, path = None, spec
        examples.extend(load_examples(path, args.format, task=task))
    if args.data_dir:
        examples.extend(load_task_dir(args.data_dir, split, tasks=args.tasks, fmt=args.format))
    if not args.data and not args.data_dir:
        raise ValueError("no data: give --data FILE (repeatable) or --data-dir DIR")
    if args.tasks:
        have = {e.task for e in examples}
        missing = sorted(set(args.tasks) - have)
        if missing:
            raise KeyError(f"task(s) {missing} not in the data; tasks there: {sorted(have)}")
        examples = [e for e in examples if e.task in set(args.tasks)]
    if not examples:
        raise ValueError("the data holds no examples")
    if args.max_per_task:
        by_task: dict[str, list] = {}
        for e in examples:
            by_task.setdefault(e.task, []).append(e)
        examples = [e for t, exs in by_task.items() for e in _subsample(exs, args.max_per_task, 0, f"{t}/{split}")]
    check_unique_ids(examples)
    return examples


# ---------------------------------------------------------------- demo


def _add_demo(sub: Any) -> None:
    from .demo import DEMO_DEFAULT_METHODS, DEMO_DEFAULT_TASKS

    p = sub.add_parser("demo", help="LoRA vs HydraLoRA vs ALoRA on generated tasks with SmolLM2-135M (minutes, CPU)",
                       description="Fine-tune SmolLM2-135M with each method on a small generated multi-task set "
                                   "(held-out test items), print the loss before and after, the per-task table "
                                   "and write a bar chart.")
    p.add_argument("--steps", type=int, default=30, help="optimiser steps per method (default 30)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--methods", type=_csv, default=list(DEMO_DEFAULT_METHODS),
                   help="comma-separated methods (default lora,hydralora,alora)")
    p.add_argument("--tasks", type=_csv, default=list(DEMO_DEFAULT_TASKS),
                   help=f"generated tasks (default {','.join(DEMO_DEFAULT_TASKS)}); also reverse, count_letters")
    p.add_argument("--n-train", type=int, default=120, help="training items per task")
    p.add_argument("--n-test", type=int, default=25, help="held-out test items per task")
    p.add_argument("--model", default="smollm2-135m", help="base model (default smollm2-135m)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, methods=args.methods, steps=args.steps, tasks=args.tasks, n_train=args.n_train,
             n_test=args.n_test, model=args.model, progress=not args.no_progress, threads=args.threads)
    return 0


# ---------------------------------------------------------------- train

_TRAIN_FLAGS = {  # flag -> (TrainConfig field, type)
    "lr": ("learning_rate", float), "epochs": ("num_epochs", float), "max_steps": ("max_steps", int),
    "batch_size": ("batch_size", int), "grad_accum": ("grad_accum", int), "cutoff_len": ("cutoff_len", int),
    "seed": ("seed", int), "save_steps": ("save_steps", int), "logging_steps": ("logging_steps", int),
    "report_to": ("report_to", str), "precision": ("precision", str), "sampling": ("sampling", str),
    "template": ("template", str), "warmup_steps": ("warmup_steps", int),
    "loss_chunk_size": ("loss_chunk_size", int), "adapter_dtype": ("adapter_dtype", str),
    "bnb_4bit_quant_type": ("bnb_4bit_quant_type", str), "bnb_4bit_compute_dtype": ("bnb_4bit_compute_dtype", str),
}
_FLAG_HELP = {
    "lr": "learning rate (default 3e-4)", "epochs": "epochs (default 3; --max-steps overrides)",
    "max_steps": "optimiser steps (overrides --epochs)", "batch_size": "examples per device batch (default 4)",
    "grad_accum": "gradient accumulation steps (default 4)", "cutoff_len": "tokens per example, at most (default 256)",
    "precision": "auto, fp32, bf16 or fp16 (auto: bf16 on a GPU that has it, fp32 on the CPU)",
    "sampling": "task mixing: proportional, balanced or temperature", "report_to": "tensorboard, wandb, ... or none",
    "template": "prompt template: alpaca_short, chat or a template .json",
    "loss_chunk_size": "logits only where there are labels, this many tokens at a time (same loss, faster)",
    "adapter_dtype": "base (default: the base weights' dtype) or float32 (PEFT's upcast)",
    "bnb_4bit_quant_type": "with --load-in-4bit: nf4 (default) or fp4",
    "bnb_4bit_compute_dtype": "with --load-in-4bit: auto (the training precision), fp32, bf16 or fp16",
    "r": "adapter rank (default: the method's equal-budget rank)", "alpha": "lora_alpha (default 2r)",
    "num_experts": "experts of ALoRA / HydraLoRA (default 3)", "dropout": "adapter dropout (default 0.05)",
}
_ADAPTER_FLAGS = {"r": ("r", int), "alpha": ("lora_alpha", float), "num_experts": ("num_experts", int),
                  "dropout": ("lora_dropout", float)}


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune one method on mixed tasks (Transformers Trainer underneath)",
                       description="Train one adapter on the mixed examples of every task. Either give a "
                                   "comparison CONFIG (its model, tasks, adapter and training sections) or the "
                                   "model and data as options; options override the config.")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="a comparison YAML (optional)")
    p.add_argument("--method", help="lora, alora, hydralora, moslora, loha or adalora")
    p.add_argument("--model", help="base model: a hub name, a local folder, or smollm2-135m")
    _add_data_args(p, "the training split")
    p.add_argument("--out", help="output folder (checkpoints/, adapter/, run.json)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--targets", help="target modules: names (q_proj,o_proj) or one regex")
    for flag, (key, tp) in {**_TRAIN_FLAGS, **_ADAPTER_FLAGS}.items():
        p.add_argument("--" + flag.replace("_", "-"), type=tp, dest=flag, metavar=tp.__name__.upper(),
                       help=_FLAG_HELP.get(flag, f"sets {key}"))
    p.add_argument("--train-on-prompt", action="store_true", help="put the loss on the prompt tokens too")
    p.add_argument("--packing", action="store_true",
                   help="pack each batch's examples into rows as long as its longest example (no attention across examples)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--load-in-4bit", action="store_true", help="quantise the base to 4 bits (QLoRA; bitsandbytes)")
    p.add_argument("--load-in-8bit", action="store_true", help="quantise the base to 8 bits (bitsandbytes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .compare import load_compare_config, load_tasks
    from .config import TrainConfig
    from .trainer import train

    training: dict[str, Any] = {}
    adapter: dict[str, Any] = {}
    method, model, out = args.method, args.model, args.out
    if args.config:
        cfg = load_compare_config(args.config)
        training = cfg.train_config.to_dict()
        adapter = dict(cfg.adapter)
        if method is None:
            if len(cfg.method_overrides) != 1:
                raise ValueError(f"{args.config} names methods {list(cfg.method_overrides)}: choose one with --method")
            method = next(iter(cfg.method_overrides))
        adapter.update(cfg.method_overrides.get(method, {}))
        model = model or cfg.model
        out = out or str(Path(cfg.output_dir or "runs") / f"train-{method}")
        if args.data or args.data_dir:
            examples = _examples(args, "train")
        else:
            examples = [e for t in load_tasks(cfg) for e in t.train]
    else:
        missing = [f"--{n}" for n, v in (("method", method), ("out", out)) if v is None]
        if missing:
            raise ValueError(f"without a CONFIG, {' and '.join(missing)} must be given")
        model = model or "smollm2-135m"
        examples = _examples(args, "train")
    if method is None:
        raise ValueError("--method is required")
    for flag, (key, _) in _TRAIN_FLAGS.items():
        if getattr(args, flag) is not None:
            training[key] = getattr(args, flag)
    for flag, (key, _) in _ADAPTER_FLAGS.items():
        if getattr(args, flag) is not None:
            adapter[key] = getattr(args, flag)
    if args.targets:
        adapter["target_modules"] = args.targets
    for flag, key in (("train_on_prompt", "train_on_prompt"), ("packing", "packing"), ("compile", "torch_compile"),
                      ("load_in_4bit", "load_in_4bit"), ("load_in_8bit", "load_in_8bit")):
        if getattr(args, flag):
            training[key] = True
    if args.no_progress:
        training["progress"] = False
    config = TrainConfig.from_dict(training, "training")
    tasks = sorted({e.task for e in examples})
    print(f"training {method} on {len(examples)} examples of {len(tasks)} task(s): {', '.join(tasks)}")
    result = train(model, None, examples, method, out, config=config, adapter=adapter, resume=args.resume,
                   data_info={"sources": args.data or ([args.data_dir] if args.data_dir else [args.config])})
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    if losses:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {result.run['metrics']['global_step']} steps")
    print(f"adapter: {result.adapter_dir}")
    return 0


# ---------------------------------------------------------------- evaluate


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="score a trained adapter on test data, per task",
                       description="Generate (eval mode, greedy or beam) for every test example, extract the answer "
                                   "and score each task; writes a fresh predictions file with every example's id.")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="a folder written by asymlora train (or its adapter/)")
    _add_data_args(p, "the test split")
    p.add_argument("--metric", help="one metric for every task (commonsense, math, aqua, exact, rouge1), or "
                                    "task=metric pairs; default: by task name (LLM-Adapters names), else ROUGE-1")
    p.add_argument("--base-model", help="base model, if not the one recorded in run.json")
    p.add_argument("--out", help="folder for predictions.jsonl and scores.json (default: <run>/eval)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--template", help="prompt template (default: the one the adapter was trained with)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_evaluate)


def _kinds(spec: Optional[str]) -> Any:
    from ..evaluate.scoring import TASK_KINDS

    if spec is None:
        return None
    if "=" not in spec:
        if spec not in TASK_KINDS:
            raise ValueError(f"--metric: unknown metric {spec!r}; use one of {TASK_KINDS}")
        return spec
    kinds = {}
    for item in _csv(spec):
        task, _, kind = item.partition("=")
        if kind not in TASK_KINDS:
            raise ValueError(f"--metric: unknown metric {kind!r} for task {task!r}; use one of {TASK_KINDS}")
        kinds[task] = kind
    return kinds


def _load_for_cli(adapter_dir: str, base_model: Optional[str]):
    from ..models import load_model
    from .trainer import load_trained

    if base_model:
        base, tok = load_model(base_model)
        return load_trained(adapter_dir, base_model=base, tokenizer=tok)
    return load_trained(adapter_dir)


def _run_dir(adapter_dir: str) -> Path:
    path = Path(adapter_dir)
    return path.parent if path.name == "adapter" else path


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.generate import evaluate_examples

    kinds = _kinds(args.metric)
    examples = _examples(args, "test")
    if isinstance(kinds, dict):
        missing = sorted({e.task for e in examples} - set(kinds))
        if missing:
            raise KeyError(f"--metric names no metric for task(s) {missing}")
    model, tok, run = _load_for_cli(args.adapter_dir, args.base_model)
    template = args.template or run.get("training", {}).get("template")
    out = Path(args.out) if args.out else _run_dir(args.adapter_dir) / "eval"
    result = evaluate_examples(model, tok, examples, kinds=kinds, template=template,
                               predictions_path=out / "predictions.jsonl", batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                               progress=not args.no_progress)
    kinds_used = {r["task"]: r["kind"] for r in result.records}
    scores = {"adapter": str(args.adapter_dir), "per_task": result.per_task, "average": result.average,
              "kinds": kinds_used, "n": {t: sum(1 for e in examples if e.task == t) for t in result.per_task}}
    write_json_atomic(out / "scores.json", scores)
    width = max(len(t) for t in result.per_task)
    for t, s in result.per_task.items():
        print(f"{t:<{width}}  {s:6.2f}  ({kinds_used[t]}, n={scores['n'][t]})")
    print(f"{'Avg.':<{width}}  {result.average:6.2f}")
    print(f"predictions: {out / 'predictions.jsonl'}")
    return 0


# ---------------------------------------------------------------- compare


def _add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="every method and single-task baselines on the same tasks, in the paper's table",
                       description="Train single-task baselines (cached) and each multi-task method named in CONFIG, "
                                   "score every task, and write results.json, results.md (one column per task, "
                                   "Avg., Delta m%%) and results.png.")
    p.add_argument("config", metavar="CONFIG", help="comparison YAML (see configs/)")
    p.add_argument("--out", help="output folder (default: the config's output_dir)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    summary = compare(args.config, out_dir=args.out, progress=not args.no_progress)
    print(Path(summary["files"]["markdown"]).read_text(encoding="utf-8"))
    print(f"results: {summary['files']['json']}  chart: {summary['files']['chart']}")
    return 0


# ---------------------------------------------------------------- export


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="write a plain PEFT LoRA adapter for a fixed gate (servable anywhere)",
                       description="At a fixed gate w, ALoRA is the rank-r LoRA (sum_i w_i A_i, B) and HydraLoRA "
                                   "(A, sum_i w_i B_i). Give w, or data to measure each layer's mean gate on.")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the LoRA adapter")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gate", type=_floats, help="one gate vector for every layer: w1,w2,w3")
    g.add_argument("--mean-gate-data", metavar="FILE", help="records whose mean gate per layer is used")
    p.add_argument("--format", default="auto", help="record format of --mean-gate-data")
    p.add_argument("--max-examples", type=int, default=256, help="examples of --mean-gate-data to use")
    p.add_argument("--base-model", help="base model, if not the one recorded in run.json")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ..adapters.config import check_gate
    from ..adapters.export import export_lora, mean_gates
    from ..adapters.inspect import iter_adapter_layers
    from ..adapters.layer import RoutedLayer
    from ..data.tokenize import MultiTaskCollator, tokenize_examples

    model, tok, run = _load_for_cli(args.adapter_dir, args.base_model)
    routed = [layer for _, layer in iter_adapter_layers(model, RoutedLayer)]
    gate: Any = None
    if args.gate is not None:
        if not routed:
            raise ValueError("--gate is only for routed adapters (ALoRA, HydraLoRA)")
        gate = check_gate(args.gate, routed[0].num_experts["default"], "--gate")
    elif args.mean_gate_data:
        if not routed:
            raise ValueError("--mean-gate-data is only for routed adapters (ALoRA, HydraLoRA)")
        examples = _gate_examples(args.mean_gate_data, args.format)[: args.max_examples]
        training = run.get("training", {})
        feats, _ = tokenize_examples(examples, tok, training.get("template"), training.get("cutoff_len", 256))
        collate = MultiTaskCollator(tok.pad_token_id, return_task_ids=False)
        device = next(model.parameters()).device
        batches = [{k: v.to(device) for k, v in collate(feats[i:i + 8]).items() if k != "labels"}
                   for i in range(0, len(feats), 8)]
        gate = mean_gates(model, batches)
    elif any(layer.fixed_gate.get("default") is None and layer.num_experts["default"] > 1 for layer in routed):
        raise ValueError("a routed adapter needs a gate to export: give --gate w1,...,wn or --mean-gate-data FILE")
    out = export_lora(model, args.out_dir, gate=gate)
    if isinstance(gate, dict):
        write_json_atomic(out / "mean_gates.json", {k: [round(float(x), 6) for x in v] for k, v in gate.items()},
                          indent=1)
    print(f"exported a plain LoRA adapter to {out}")
    return 0


def _gate_examples(path: str, fmt: str) -> list:
    """Records to measure gates on: their task does not matter, so a file without task fields is fine."""
    from ..data.records import load_examples

    try:
        return load_examples(path, fmt)
    except ValueError as exc:
        if "no task" not in str(exc):
            raise
        return load_examples(path, fmt, task="gates")


def register(subparsers: Any) -> None:
    """Add demo, train, evaluate, compare and export to an argparse subparsers object."""
    _add_demo(subparsers)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_compare(subparsers)
    _add_export(subparsers)
