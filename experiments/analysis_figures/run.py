"""Recipe: the paper's Figures 1-3 at small scale, with SmolLM2-135M on the shared FLAN data.

    python experiments/analysis_figures/run.py --steps 30 --out experiments/analysis_figures/results

Figure 1 (similarity): LoRA on task X and on task Y from the same seed, and on X from another seed;
    layer-wise Sim of A and of B between (X, s0)-(Y, s0) and (X, s0)-(X, s1).
Figure 2 (dynamics): the (X, s0) adapter at step 2 against the end of training: Sim, dM, dD.
Figure 3 (gradient conflicts): HydraLoRA (shares A) and ALoRA (shares B) on X+Y mixed; per step and
    layer, the norm of the shared matrix's gradient and how many expert pairs conflict.
Everything is written under --out as JSON, Markdown and PNG, plus summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("ASYMLORA_SHARED_DATA", HERE.parents[1] / ".." / "shared" / "data"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--examples", type=int, default=96, help="training examples per task")
    parser.add_argument("--task-x", default="local_training_1.json", help="flan8-federated file (entailment)")
    parser.add_argument("--task-y", default="local_training_6.json", help="flan8-federated file (text formatting)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from asymlora.analysis.compare import run_dynamics, run_similarity
    from asymlora.analysis.plots import plot_gradient_conflicts, plot_similarity_panels, write_json
    from asymlora.analysis.recorder import AdapterSnapshotCallback, GradientConflictCallback, load_conflicts
    from asymlora.data.records import load_examples
    from asymlora.models import load_model
    from asymlora.train.trainer import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flan = DATA / "flan8-federated"
    task_x = load_examples(flan / args.task_x)[: args.examples]
    task_y = load_examples(flan / args.task_y)[: args.examples]
    hyper = dict(max_steps=args.steps, batch_size=4, grad_accum=1, cutoff_len=128, learning_rate=5e-4,
                 save_steps=10_000, logging_steps=5, progress=True)
    lora = {"r": 8, "target_modules": ["q_proj", "v_proj"]}

    def run(name, method, examples, seed, callbacks=(), adapter=None):
        target = out / "runs" / name
        if (target / "adapter" / "adapter_model.safetensors").is_file():
            print(f"[{name}] reusing {target}")
            return target
        model, tokenizer = load_model(args.model)
        print(f"[{name}] {method} seed {seed} on {len(examples)} examples, {args.steps} steps")
        train(model, tokenizer, examples, method, target, adapter=adapter or lora, seed=seed,
              callbacks=list(callbacks), **hyper)
        return target

    x_s0 = run("lora_x_seed0", "lora", task_x, 0, [AdapterSnapshotCallback(steps=(2,))])
    y_s0 = run("lora_y_seed0", "lora", task_y, 0)
    x_s1 = run("lora_x_seed1", "lora", task_x, 1)
    routed = {"r": 8, "num_experts": 3, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
    hydra = run("hydralora_xy", "hydralora", task_x + task_y, 0, [GradientConflictCallback()], routed)
    alora = run("alora_xy", "alora", task_x + task_y, 0, [GradientConflictCallback()], routed)

    same_seed = run_similarity(x_s0 / "adapter", y_s0 / "adapter", out / "fig1_same_seed_different_task")
    same_task = run_similarity(x_s0 / "adapter", x_s1 / "adapter", out / "fig1_different_seed_same_task")
    panels = [(label, [r["layer"] for r in res["layers"]], [r["sim_A"] for r in res["layers"]],
               [r["sim_B"] for r in res["layers"]])
              for label, res in (("same seed, different tasks (X vs Y)", same_seed),
                                 ("different seeds, same task (X seed 0 vs seed 1)", same_task))]
    plot_similarity_panels(panels, out / "fig1_similarity.png")
    dynamics = run_dynamics(x_s0 / "checkpoints" / "snapshots" / "step-2", x_s0 / "adapter", out / "fig2_dynamics")

    series = {}
    for label, run_dir in (("HydraLoRA (shares A)", hydra), ("ALoRA (shares B)", alora)):
        _, records = load_conflicts(run_dir / "checkpoints" / "analysis" / "gradient_conflicts.json")
        series[label] = records
    plot_gradient_conflicts(series, out / "fig3_conflicts" / "conflicts.png")
    conflicts = {label: {"mean_grad_norm": statistics.mean(r["grad_norm"] for r in recs),
                         "mean_conflicting_pairs": statistics.mean(r["n_conflicts"] for r in recs),
                         "records": len(recs)} for label, recs in series.items()}
    write_json(conflicts, out / "fig3_conflicts" / "conflicts.json")

    summary = {"settings": {**hyper, "examples_per_task": args.examples, "task_x": args.task_x,
                            "task_y": args.task_y, "model": args.model},
               "fig1_same_seed_different_task": same_seed["mean"],
               "fig1_different_seed_same_task": same_task["mean"],
               "fig2_dynamics": dynamics["mean"],
               "fig3_conflicts": conflicts}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
