"""`asymlora demo`: LoRA vs HydraLoRA vs ALoRA on a small generated multi-task set with SmolLM2-135M.

Made to finish in a few minutes on two CPU cores: a few dozen optimiser steps per method on short
prompts. The test items are held out (drawn before and disjoint from the training items), scored
by exact match. Delta m% needs single-task baselines, which would multiply the cost by the number
of tasks, so the demo uses the LoRA row as its reference (and shows the untrained base model too).
It also writes the generated tasks and a comparison config, so `asymlora compare` re-runs the same
thing at any size.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..data.synthetic import DEMO_TASKS, make_demo_tasks
from ..files import write_json_atomic
from .compare import BASE, EvalSettings, TaskData, run_comparison
from .config import TrainConfig
from .methods import METHOD_LABELS, METHODS

__all__ = ["DEMO_DEFAULT_TASKS", "DEMO_DEFAULT_METHODS", "run_demo"]

DEMO_DEFAULT_TASKS = ("uppercase", "opposite", "add", "sort")
DEMO_DEFAULT_METHODS = ("lora", "hydralora", "alora")


def _write_task_files(root: Path, tasks: list[TaskData], model: str, methods: Sequence[str],
                      config: TrainConfig, eval_settings: EvalSettings) -> Path:
    """The generated tasks as LLM-Adapters-style JSON files, and a config that `asymlora compare` runs."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for t in tasks:
        for split, exs in (("train", t.train), ("test", t.test)):
            recs = [{"instruction": e.instruction, "input": e.input, "output": e.output, "answer": e.answer}
                    for e in exs]
            (root / f"{t.name}-{split}.json").write_text(json.dumps(recs, indent=1), encoding="utf-8")
        entries.append({"name": t.name, "train": f"{t.name}-train.json", "test": f"{t.name}-test.json",
                        "metric": "exact"})
    training = {k: v for k, v in config.to_dict().items() if v != TrainConfig().to_dict()[k]}
    cfg = {"model": model, "tasks": entries, "methods": list(methods), "single_task": "lora",
           "training": training, "evaluation": {"batch_size": eval_settings.batch_size,
                                                "max_new_tokens": eval_settings.max_new_tokens},
           "title": "Demo tasks with single-task baselines"}
    path = root / "compare.yaml"
    path.write_text("# Written by `asymlora demo`. Run: asymlora compare " + str(path) + "\n"
                    + yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def run_demo(
    out_dir: str | Path = "runs/demo",
    methods: Sequence[str] = DEMO_DEFAULT_METHODS,
    steps: int = 30,
    tasks: Sequence[str] = DEMO_DEFAULT_TASKS,
    n_train: int = 120,
    n_test: int = 25,
    model: str = "smollm2-135m",
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    threads: Optional[int] = None,
) -> dict[str, Any]:
    """Run the demo and print its story; returns the results summary (with wall time under meta)."""
    import torch
    from tqdm.auto import tqdm

    from ..models import load_model

    started = time.time()
    say = tqdm.write
    methods = [m.lower() for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    if not methods:
        raise ValueError("no methods to run")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0))))
    out = Path(out_dir)

    train_ex, test_ex = make_demo_tasks(n_train, n_test, seed=seed, tasks=list(tasks))
    task_data = [TaskData(name, [e for e in train_ex if e.task == name], [e for e in test_ex if e.task == name],
                          metric="exact") for name in tasks]
    say(f"asymlora demo: {', '.join(METHOD_LABELS[m] for m in methods)} on {len(tasks)} generated tasks "
        f"({n_train} train / {n_test} held-out test items each), {steps} steps per method")
    for name in tasks:
        ex = next(e for e in test_ex if e.task == name)
        say(f"  {name:<14} {DEMO_TASKS[name].instruction!r}  e.g. {ex.input!r} -> {ex.output!r}")

    say(f"loading {model} ...")
    base, tokenizer = load_model(model)
    config = TrainConfig(max_steps=steps, batch_size=batch_size, grad_accum=1, learning_rate=learning_rate,
                         cutoff_len=64, warmup_steps=min(5, steps // 4), logging_steps=max(1, steps // 8),
                         save_steps=max(steps, 1), save_total_limit=1, seed=seed, progress=progress,
                         # the fast path: same loss, 1.5x the tokens/s on the CPU (benchmarks/results)
                         packing=True, loss_chunk_size=4096)
    eval_settings = EvalSettings(batch_size=25, max_new_tokens=12, heldout_loss=True)
    cfg_path = _write_task_files(out / "data", task_data, model, methods, config, eval_settings)

    summary = run_comparison(
        model, base, tokenizer, task_data, {m: {} for m in methods}, out, train_config=config,
        single_task=None, eval_settings=eval_settings,
        reference="LoRA" if "lora" in methods else None, include_base=True,
        title="asymlora demo: SmolLM2-135M, generated tasks, exact match (%)", progress=progress,
        meta={"demo": {"steps": steps, "n_train": n_train, "n_test": n_test, "seed": seed,
                       "learning_rate": learning_rate, "batch_size": batch_size}},
    )
    wall = time.time() - started
    summary["meta"]["wall_seconds"] = round(wall, 1)
    write_json_atomic(summary["files"]["json"], {k: v for k, v in summary.items() if k != "files"})

    losses = summary["meta"]["heldout_loss"]
    say("\nHeld-out loss (response tokens, test items never trained on):")
    say(f"  {'before (base model)':<22} {losses[BASE]['overall']:.3f}")
    for m in methods:
        row = METHOD_LABELS[m]
        say(f"  {'after ' + row:<22} {losses[row]['overall']:.3f}")
    say("\n" + Path(summary["files"]["markdown"]).read_text(encoding="utf-8"))
    if "lora" in methods:
        say("Δm% is measured against the LoRA row (single-task baselines would cost one run per task; "
            f"`asymlora compare {cfg_path}` runs them).")
    say(f"chart: {summary['files']['chart']}   results: {summary['files']['json']}   "
        f"predictions: {out / 'predictions'}")
    say(f"wall time: {wall / 60:.1f} min")
    return summary
