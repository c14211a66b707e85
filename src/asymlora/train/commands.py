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
    p.add_argument("--data", action="append", default=[], metavar="[TASK=]PATH",
                   help=f"a JSON/JSONL file of records, or a data folder ({required_hint}); TASK= names the task "
                        "of every record, otherwise each record's task field is used. Repeat for several files")
    p.add_argument("--data-dir", help="a data folder: FLAN/federated (local_training_*.json + test.jsonl, test.json "
                                      "or global_test.json), train.json + test.json, or LLM-Adapters "
                                      "(<task>/train.json, <task>/test.json)")
    p.add_argument("--tasks", type=_csv, help="keep only these tasks (comma-separated)")
    p.add_argument("--format", default="auto", type=_record_format, metavar="FORMAT",
                   help="record format: auto, llm_adapters, flan, dolly, or a field mapping such as "
                        "instruction=question,output=label,answer=gold (or the same as a JSON object)")
    p.add_argument("--task-field", help="the record field naming each record's task (default: the first of "
                                        "category, task, task_type, class)")
    p.add_argument("--max-per-task", type=int, help="use at most this many examples of each task")


def _record_format(text: str) -> Any:
    """A format name, or a field mapping: `instruction=question,output=label` or a JSON object."""
    import json

    text = text.strip()
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"field mapping is not valid JSON ({exc.msg})") from None
    elif "=" in text:
        mapping = {}
        for item in _csv(text):
            field, sep, key = item.partition("=")
            if not sep or not field.strip() or not key.strip():
                raise argparse.ArgumentTypeError(f"expected FIELD=KEY pairs, got {item!r}")
            mapping[field.strip()] = key.strip()
    else:
        return text
    from ..data.records import RecordFormat

    try:
        return RecordFormat.from_mapping(mapping)
    except (KeyError, TypeError) as exc:
        raise argparse.ArgumentTypeError(exc.args[0] if exc.args else str(exc)) from None


def _examples(args: argparse.Namespace, split: str) -> list:
    from ..data.records import check_unique_ids, load_examples, load_task_dir
    from .compare import _subsample

    examples = []
    folders = [args.data_dir] if args.data_dir else []
    for spec in args.data:
        task, sep, path = spec.partition("=")
        if not sep or "/" in task or not task:
            task, path = None, spec
        if Path(path).is_dir():
            folders.append(path)
        else:
            examples.extend(load_examples(path, args.format, task=task, task_field=args.task_field))
    for folder in folders:
        examples.extend(load_task_dir(folder, split, tasks=args.tasks, fmt=args.format, task_field=args.task_field))
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
                   help="pack each batch's examples into rows as long as its longest example "
                        "(no attention across examples)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--load-in-4bit", action="store_true", help="quantise the base to 4 bits (QLoRA; bitsandbytes)")
    p.add_argument("--load-in-8bit", action="store_true", help="quantise the base to 8 bits (bitsandbytes)")
    p.add_argument("--push-to-hub", action="store_true",
                   help="push each checkpoint's adapter to the Hugging Face Hub as the Trainer does (needs a token)")
    p.add_argument("--hub-model-id", metavar="USER/NAME",
                   help="the Hub repository to push to (implies --push-to-hub; default: the Trainer's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ..files import check_writable_dir
    from .compare import load_compare_config, load_tasks
    from .config import TrainConfig, check_report_to
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
    if args.push_to_hub or args.hub_model_id:
        hub = {"push_to_hub": True, **({"hub_model_id": args.hub_model_id} if args.hub_model_id else {})}
        training["extra_args"] = {**training.get("extra_args", {}), **hub}
    config = TrainConfig.from_dict(training, "training")
    check_report_to(config.report_to, "--report-to")
    check_writable_dir(out, "--out")
    tasks = sorted({e.task for e in examples})
    print(f"training {method} on {len(examples)} examples of {len(tasks)} task(s): {', '.join(tasks)}")
    try:
        result = train(model, None, examples, method, out, config=config, adapter=adapter, resume=args.resume,
                       data_info={"sources": args.data or ([args.data_dir] if args.data_dir else [args.config])})
    except KeyboardInterrupt:
        _mark_interrupted(Path(out))
        raise
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    if losses:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {result.run['metrics']['global_step']} steps")
    print(f"adapter: {result.adapter_dir}")
    return 0


def _mark_interrupted(out: Path) -> None:
    """A run stopped by Ctrl-C says so in run.json (it would say "running" forever); its
    checkpoints stay, so --resume continues it."""
    from .trainer import RUN_FILE, read_run

    try:
        run = read_run(out)
    except (FileNotFoundError, ValueError):
        return
    if run.get("status") == "running" and (out / RUN_FILE).is_file():
        run["status"] = "interrupted"
        write_json_atomic(out / RUN_FILE, run)


# ---------------------------------------------------------------- evaluate


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="score a trained adapter (or the base model) on test data, per task",
                       description="Generate (eval mode, greedy or beam) for every test example, extract the answer "
                                   "and score each task with the metric its data calls for; writes a fresh folder "
                                   "of its own per data set with predictions.jsonl and scores.json.")
    p.add_argument("adapter_dir", nargs="?", metavar="ADAPTER_DIR",
                   help="a folder written by asymlora train (or its adapter/); leave out to score --base-model alone")
    _add_data_args(p, "the test split")
    p.add_argument("--metric", action="append", default=[], metavar="[TASK=]KIND",
                   help="metric for every task, or TASK=KIND (repeatable, or comma-separated); kinds: commonsense "
                        "(label words), math (number), aqua or option (option letter), exact, rouge1. Default: "
                        "each task's data decides")
    p.add_argument("--base-model", help="base model name or folder; without ADAPTER_DIR the base model is scored")
    p.add_argument("--out", help="folder for predictions.jsonl and scores.json (default: <run>/eval-<data>, "
                                 "a new folder where another evaluation's results are)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated together (default 16)")
    p.add_argument("--max-new-tokens", action="append", default=[], metavar="[TASK_OR_KIND=]N",
                   help="tokens generated per answer, for all tasks or TASK=N / KIND=N (repeatable); default "
                        "by metric: math and option letters 256, the rest 32")
    p.add_argument("--max-prompt-tokens", type=int,
                   help="longer prompts keep their last N tokens, with a warning (default: the run's cutoff_len, "
                        "1024 for a base model)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (default 1: greedy)")
    p.add_argument("--template", help="prompt template (default: the one the adapter was trained with)")
    p.add_argument("--bootstrap-seed", type=int, default=0,
                   help="seed of the 95%% bootstrap confidence intervals in scores.json (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_evaluate)


def _pairs(values: list[str], flag: str, convert: Any) -> Any:
    """`--flag X` (one value for all) or `--flag KEY=X` pairs, repeatable and comma-separated."""
    items = [i for v in values for i in _csv(v)]
    if not items:
        return None
    if len(items) == 1 and "=" not in items[0]:
        return convert(items[0], flag)
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag}: give one value, or KEY=VALUE pairs; got {item!r}")
        out[key] = convert(value, f"{flag} {key}")
    return out


def _kind(value: str, where: str) -> str:
    from ..evaluate.scoring import normalize_kind

    try:
        return normalize_kind(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _count(value: str, where: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{where}: expected a whole number, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{where}: must be >= 1, got {n}")
    return n


def _kinds(specs: list[str], tasks: set[str]) -> Any:
    kinds = _pairs(specs, "--metric", _kind)
    if isinstance(kinds, dict):
        unknown = sorted(set(kinds) - tasks)
        if unknown:
            raise KeyError(f"--metric names task(s) {unknown} not in the data; tasks there: {sorted(tasks)}")
    return kinds


def _check_adapter_dir(adapter_dir: str) -> None:
    """The adapter folder's config read and its method known, before a model loads: errors name the file."""
    import peft

    from ..files import read_settings

    path = Path(adapter_dir)
    if (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory not found: {path}")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no adapter_config.json: not an adapter folder")
    config = read_settings(config_file, "adapter config", fmt="json")
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    import asymlora  # noqa: F401  (adds asymlora's methods to PeftType)

    known = sorted(t.value for t in peft.PeftType)
    if config.get("peft_type") not in known:
        raise ValueError(f"{config_file}: unknown peft_type {config.get('peft_type')!r}; known: {', '.join(known)}")


def _load_for_cli(adapter_dir: Optional[str], base_model: Optional[str]):
    """(model, tokenizer, run record); an unreadable weights file is one line naming the folder."""
    from safetensors import SafetensorError

    from ..models import load_model

    if adapter_dir is not None:
        _check_adapter_dir(adapter_dir)
    try:
        if adapter_dir is None:
            model, tok = load_model(base_model)
            return model, tok, {}
        from .trainer import load_trained

        if base_model:
            base, tok = load_model(base_model)
            return load_trained(adapter_dir, base_model=base, tokenizer=tok)
        return load_trained(adapter_dir)
    except SafetensorError as exc:
        where = adapter_dir or base_model
        raise ValueError(f"{where}: a weights file cannot be read, it is truncated or not safetensors ({exc})") \
            from None


def _run_dir(adapter_dir: str) -> Path:
    path = Path(adapter_dir)
    return path.parent if path.name == "adapter" else path


def _data_name(args: argparse.Namespace) -> str:
    """A folder name for the evaluated data: its files' stems (or folder name), tasks kept."""
    import re

    parts = [Path(spec.partition("=")[2] if "=" in spec and "/" not in spec.partition("=")[0] else spec)
             for spec in args.data]
    names = [p.parent.name if p.stem in ("test", "global_test") and p.parent.name else p.stem for p in parts]
    if args.data_dir:
        names.append(Path(args.data_dir).name)
    if args.tasks:
        names.append("+".join(args.tasks))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(names))[:80]
    return name or "data"


def _eval_dir(args: argparse.Namespace, fingerprint: str) -> Path:
    """`--out`, or a folder of this data's own: one holding another evaluation's scores is kept and
    the next free `-2`, `-3`... is used."""
    import json

    if args.out:
        return Path(args.out)
    if args.adapter_dir is not None:
        root = _run_dir(args.adapter_dir)
    else:
        root = Path("runs") / ("base-" + Path(args.base_model).name.replace(":", "_"))
    base = root / f"eval-{_data_name(args)}"
    for i in range(1, 1000):
        out = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            held = json.loads((out / "scores.json").read_text(encoding="utf-8")).get("fingerprint")
        except (FileNotFoundError, ValueError, AttributeError):
            held = None if not out.exists() else "?"
        if held is None or held == fingerprint:
            return out
    raise FileExistsError(f"{base}: 999 evaluations already there; pass --out")


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.generate import evaluate_examples, generation_lengths
    from ..evaluate.scoring import METRIC_NAMES, resolve_kinds
    from ..files import check_writable_dir
    from .compare import _hash
    from .trainer import data_fingerprint

    if args.adapter_dir is None and not args.base_model:
        raise ValueError("give ADAPTER_DIR, or --base-model NAME to score the base model alone")
    examples = _examples(args, "test")
    kinds = resolve_kinds(examples, _kinds(args.metric, {e.task for e in examples}))  # before any model loads
    lengths = generation_lengths(kinds, _pairs(args.max_new_tokens, "--max-new-tokens", _count))
    settings = {"adapter": str(args.adapter_dir) if args.adapter_dir else None, "base_model": args.base_model,
                "kinds": kinds, "max_new_tokens": lengths, "num_beams": args.num_beams, "template": args.template,
                "max_prompt_tokens": args.max_prompt_tokens, "data": data_fingerprint(examples)}
    fingerprint = _hash(settings)
    out = _eval_dir(args, fingerprint)
    check_writable_dir(out, "--out")
    model, tok, run = _load_for_cli(args.adapter_dir, args.base_model)
    training = run.get("training", {})
    template = args.template or training.get("template")
    max_prompt = args.max_prompt_tokens or training.get("cutoff_len") or 1024
    result = evaluate_examples(model, tok, examples, kinds=kinds, template=template,
                               predictions_path=out / "predictions.jsonl", batch_size=args.batch_size,
                               max_new_tokens=lengths, num_beams=args.num_beams,
                               progress=not args.no_progress, max_prompt_tokens=max_prompt)
    from ..metrics import bootstrap_ci

    n = {t: sum(1 for e in examples if e.task == t) for t in result.per_task}
    ci = bootstrap_ci({t: [r["score"] for r in result.records if r["task"] == t] for t in result.per_task},
                      seed=args.bootstrap_seed)
    scores = {"adapter": settings["adapter"], "base_model": args.base_model or run.get("model"),
              "data": args.data or [args.data_dir], "per_task": result.per_task, "average": result.average,
              "ci": ci["per_task"], "average_ci": ci["average"],
              "ci_method": f"95% percentile bootstrap over test records, seed {args.bootstrap_seed}",
              "kinds": result.kinds, "metrics": {t: METRIC_NAMES[k] for t, k in result.kinds.items()}, "n": n,
              "max_new_tokens": lengths, "max_prompt_tokens": max_prompt, "fingerprint": fingerprint}
    write_json_atomic(out / "scores.json", scores)
    width = max(len(t) for t in result.per_task)
    def interval(c: Optional[list]) -> str:
        return f"[{c[0]:6.2f}, {c[1]:6.2f}]" if c else " " * 16

    for t, s in result.per_task.items():
        print(f"{t:<{width}}  {s:6.2f}  {interval(ci['per_task'][t])}  ({scores['metrics'][t]}, n={n[t]})")
    print(f"{'Avg.':<{width}}  {result.average:6.2f}  {interval(ci['average'])}  (95% bootstrap intervals)")
    print(f"predictions: {out / 'predictions.jsonl'}")
    return 0


# ---------------------------------------------------------------- compare


def _add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="every method and single-task baselines on the same tasks, in the paper's table",
                       description="Train single-task baselines (cached) and each multi-task method named in CONFIG, "
                                   "score every task, and write results.json, results.md (one column per task, "
                                   "Avg., Delta m%, 95% bootstrap intervals) and results.png. Keys: docs/config.md.")
    p.add_argument("config", metavar="CONFIG", help="comparison YAML (see configs/)")
    p.add_argument("--out", help="output folder (default: the config's output_dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    from ..files import check_writable_dir

    if args.out:
        check_writable_dir(args.out, "--out")
    summary = compare(args.config, out_dir=args.out, progress=not args.no_progress)
    print(Path(summary["files"]["markdown"]).read_text(encoding="utf-8"))
    print(f"results: {summary['files']['json']}  chart: {summary['files']['chart']}")
    return 0


# ---------------------------------------------------------------- export


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="write a plain PEFT LoRA adapter for a fixed gate (servable anywhere)",
                       description="At a fixed gate w, ALoRA is the rank-r LoRA (sum_i w_i A_i, B) and HydraLoRA "
                                   "(A, sum_i w_i B_i). Give w, or data to measure each layer's mean gate on.")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="a folder written by asymlora train (or its adapter/)")
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

    from ..files import check_writable_dir

    check_writable_dir(args.out_dir, "OUT_DIR")
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
