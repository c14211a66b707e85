"""Every GPU measurement of the project in one call, in the priority order of issue 13.

Started by `benchmarks/gpu_suite.sh` (which first puts SmolLM2's GGUF and the carried wheels in
place). Parts, in this order; each runs under its own deadline, so a slow part never eats the next
one's time beyond its cap, and what a part finished is packed into OUT as soon as it ends:

  step_time   benchmarks/step_time.py at LLaMA-2-7B's layer shapes (4 layers, bf16, q_proj + o_proj),
              4 x 256 and 8 x 1024: ALoRA against PEFT LoRA r16 and the frozen floor
  (smollm2)   SmolLM2-135M dequantised once from its GGUF into ASYMLORA_CACHE (the next parts need it)
  throughput  benchmarks/throughput.py on SmolLM2-135M's shape, 64 x 512: LoRA and ALoRA, plain and
              fast path eager, fast path compiled (target: ALoRA >= 500k tokens/s, same losses)
  table3      `asymlora compare`: Table 3 (cross-domain FLAN), single-task baselines, LoRA, ALoRA,
              HydraLoRA, MoSLoRA, all 200 test records per task; re-run after each method (finished
              runs are cached), so that a deadline keeps the table of the methods done so far
  federated   `asymlora federate --engine local`: the Table 4 (homogeneous) and Table 5
              (heterogeneous) runs, 10 rounds; experiments/federated/cross_task.py: the Table 1
              protocol; collect.py: the tables beside the paper's. Results are rewritten every round.

OUT receives at most 7 files (the device returns 8): suite.log (every command's output),
summary.json and summary.md (device, versions, each part's status, seconds, sizes and its table,
with the speed targets marked met / missed), and one N-PART.tar.gz per part holding its result
files at their repository paths (untar in the repository root, then commit).

    --dry-run    every part at toy size on the CPU: the same code paths and the same files
    --plan       write the configs and check the carried wheels against the GPU machine's
                 packages, run nothing
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PARTS = ("step_time", "throughput", "table3", "federated")
NEEDS_SMOLLM2 = ("throughput", "table3", "federated")
TABLE3_METHODS = ("lora", "alora", "hydralora", "moslora")  # the compare re-runs add them in this order
# Tables 4 and 5, each homogeneous/heterogeneous pair of the Table 1 protocol right after its two runs
FED_STEPS = ("fedalora-hom", "fedsa-hom", "cross:fedalora-hom,fedsa-hom", "fedit-hom", "feddpa-hom",
             "fedalora-het", "fedsa-het", "cross:fedalora-het,fedsa-het", "zeropadding-het", "flora-het")
# The dry run's: every step of the suite's own (config, federate, copy, cross_task, collect, pack) for
# a homogeneous and a heterogeneous run; each method's code is the unit tests' (--fed-runs: all of them)
DRY_FED_STEPS = ("fedalora-hom", "cross:fedalora-hom", "fedalora-het")
WHEELS = HERE / "gpu_wheels.txt"
DEVICE_PACKAGES = HERE / "gpu_device_packages.txt"
# Requirements that the suite's code paths never import, so that the GPU machine may lack them. The
# dry run shows it: benchmarks/README.md runs it in an environment of the GPU machine's packages.
FLWR_SERVER_SIDE = "flwr's SuperLink, CLI and app installs; the in-process engine imports none of it"
NOT_IMPORTED = {
    "datasets": "only for Hugging Face dataset names; the suite reads JSON files",
    "dp-accounting": "only for differential privacy, which no run of the suite asks for",
    **{name: FLWR_SERVER_SIDE for name in ("grpcio-health-checking", "uv", "tomli", "tomli-w", "prompt-toolkit",
                                           "sqlalchemy", "alembic", "uvicorn", "fastapi", "starlette")},
    "pycparser": "cffi parses C declarations with it only when building bindings, never at run time",
}


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the dry run."""

    device: str
    budget: float  # seconds for all parts together
    caps: dict[str, float]  # the most seconds a part may take (time it leaves unused rolls forward)
    step_time: list[str]
    throughput: list[str]
    table3: dict[str, Any]  # top-level keys of the compare config
    table3_training: dict[str, Any]
    table3_evaluation: dict[str, Any]
    federated: dict[str, Any]  # keys of each federated config
    cross_task_records: int
    fed_slice: float  # seconds each federated step may take at least (if the part has them)
    tag: str  # results-<tag> folders of the experiments
    table3_tasks: Optional[list[str]] = None  # a subset of Table 3's eight tasks (None: all)
    fed_clients: Optional[int] = None  # fewer clients than the configs' eight (None: all)


def real_sizes(args: argparse.Namespace) -> Sizes:
    return Sizes(
        device="cuda", budget=args.budget or 520,
        caps={"step_time": 110, "smollm2": 60, "throughput": 230, "table3": 170, "federated": 10 ** 6},
        step_time=["--device", "cuda"],  # its defaults: 4x256,8x1024, 20 steps after 3, bf16, d 4096
        throughput=["--device", "cuda", "--batch", "64", "--seq", "512", "--steps", "20", "--warmup", "5",
                    # ALoRA first: its compiled row (the target) comes before LoRA's, should the cap cut one
                    "--variants", "alora,lora", "--paths", "plain,fast", "--compile", "--compile-paths", "fast"],
        table3={"max_test_per_task": None},
        # the config's batch 4 x accumulation 4 as one batch of 16: the same update, a quarter of the launches
        table3_training={"num_epochs": args.t3_epochs or 2.0, "batch_size": 16, "grad_accum": 1,
                         "packing": True, "loss_chunk_size": 4096, "save_steps": 10 ** 6, "logging_steps": 10},
        table3_evaluation={"batch_size": 200},
        federated={"rounds": args.fed_rounds or 10, "local_epochs": args.fed_epochs or 1.0,
                   "max_eval_examples": None, "eval_batch_size": 200, "eval_every": 1, "device": "auto",
                   "progress": False},
        cross_task_records=args.cross_task_records or 50, fed_slice=args.fed_slice or 90, tag="gpu")


def dry_sizes(args: argparse.Namespace) -> Sizes:
    return Sizes(
        device="cpu", budget=args.budget or 1500,
        caps={p: 900 for p in ("step_time", "smollm2", "throughput", "table3", "federated")},
        step_time=["--device", "cpu", "--sequential", "--shapes", "2x32", "--steps", "2", "--warmup", "1"],
        throughput=["--device", "cpu", "--batch", "2", "--seq", "32", "--steps", "2", "--warmup", "1",
                    "--variants", "alora,lora", "--paths", "plain,fast", "--compile", "--compile-paths", "fast",
                    "--layers", "2"],
        table3={"max_test_per_task": 1, "max_train_per_task": 2, "include_base": False},
        table3_training={"max_steps": 1, "batch_size": 2, "grad_accum": 1, "packing": True,
                         "loss_chunk_size": 4096, "save_steps": 10 ** 6, "logging_steps": 1, "warmup_steps": 0},
        table3_evaluation={"batch_size": 8, "max_new_tokens": 4},
        federated={"rounds": args.fed_rounds or 1, "local_epochs": 1.0, "max_local_steps": 1,
                   "max_train_examples": 2, "max_eval_examples": 1, "eval_batch_size": 8, "eval_every": 1,
                   "max_new_tokens": 4, "batch_size": 2, "grad_accum": 1, "device": "cpu",
                   "progress": False, "feddpa_reference_size": 2},
        # no slices: in a dry run every step must run to its end, however loaded the machine
        cross_task_records=args.cross_task_records or 1, fed_slice=args.fed_slice or 10 ** 6, tag="dryrun",
        table3_tasks=["sentiment", "text_formatting"],  # the two with the shortest records
        fed_clients=2)  # heterogeneous runs keep their largest and smallest rank


# ---- configs ---------------------------------------------------------------------------------
def set_key(config: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` where the config has it: at the top, else in the one section that holds it, else at
    the top (so that a config whose keys moved into sections keeps getting the same overrides)."""
    if key in config:
        config[key] = value
        return
    holders = [v for v in config.values() if isinstance(v, dict) and key in v]
    (holders[0] if len(holders) == 1 else config)[key] = value


def find_key(config: dict[str, Any], key: str) -> Any:
    """The value of `key` at the top of the config or in one of its sections; None if absent."""
    if key in config:
        return config[key]
    return next((v[key] for v in config.values() if isinstance(v, dict) and key in v), None)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


def table3_config(sizes: Sizes, data: Path, work: Path, methods: list[str]) -> dict[str, Any]:
    cfg = load_yaml(ROOT / "configs" / "flan8-crossdomain.yaml")
    cfg.update(sizes.table3)
    if sizes.table3_tasks is not None:
        cfg["tasks"] = [t for t in cfg["tasks"] if (t["name"] if isinstance(t, dict) else t) in sizes.table3_tasks]
    cfg["data_dir"] = str(data / "flan8-crossdomain")
    cfg["methods"] = methods
    cfg["training"] = {**cfg.get("training", {}), **sizes.table3_training}
    cfg["evaluation"] = {**cfg.get("evaluation", {}), **sizes.table3_evaluation}
    cfg["output_dir"] = str(work / "tree" / "experiments" / "flan8_crossdomain" / f"results-{sizes.tag}")
    cfg["cache_dir"] = str(work / "runs" / "table3")
    cfg["title"] = (cfg.get("title") or "Table 3") + f" [{sizes.tag}]"
    return cfg


def federated_config(sizes: Sizes, data: Path, work: Path, run: str) -> dict[str, Any]:
    cfg = load_yaml(ROOT / "configs" / "federated" / f"flan8-{run}.yaml")
    set_key(cfg, "data_dir", str(data / "flan8-federated"))
    set_key(cfg, "output_dir", str(work / "runs" / "federated" / run))
    from asymlora.federated.config import MOVED_KEYS  # flat names of the keys now in sections

    for key, value in sizes.federated.items():
        if key in MOVED_KEYS:
            section, key = MOVED_KEYS[key]
            cfg.setdefault(section, {})[key] = value
        else:
            set_key(cfg, key, value)
    if sizes.fed_clients is not None:
        ranks = find_key(cfg, "ranks")
        if isinstance(ranks, list) and len(ranks) > 1:
            set_key(cfg, "ranks", [max(ranks), min(ranks)][:sizes.fed_clients])
        else:
            set_key(cfg, "num_clients", sizes.fed_clients)
        set_key(cfg, "min_clients", min(find_key(cfg, "min_clients") or 1, sizes.fed_clients))
    return cfg


def write_configs(sizes: Sizes, data: Path, work: Path, fed_steps: list[str]) -> dict[str, Path]:
    """Every config the parts read, written under work/configs; returns name -> path."""
    out = work / "configs"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k in range(2, len(TABLE3_METHODS) + 1):  # the first re-run has two: ALoRA against LoRA at once
        name = f"table3-{k}"
        paths[name] = out / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(table3_config(sizes, data, work, list(TABLE3_METHODS[:k])),
                                              sort_keys=False))
    for step in fed_steps:
        if not step.startswith("cross:"):
            paths[step] = out / f"{step}.yaml"
            paths[step].write_text(yaml.safe_dump(federated_config(sizes, data, work, step), sort_keys=False))
    return paths


# ---- wheels ----------------------------------------------------------------------------------
def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip().lower())


def read_list(path: Path, marker: Optional[str] = None) -> list[str]:
    """The entries of a list file (comments after #), or only those whose comment holds `marker`."""
    lines = [line.partition("#") for line in path.read_text(encoding="utf-8").splitlines()]
    return [entry.strip() for entry, _, comment in lines if entry.strip() and (marker is None or marker in comment)]


def requirement_names(reqs: list[str]) -> list[str]:
    """Distribution names of requirement strings, leaving out those behind an `extra` marker."""
    return [norm(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) for r in reqs if "extra ==" not in r]


def wheel_check(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """What the GPU machine would lack: asymlora's dependencies and those of each carried wheel that
    are neither installed there nor carried (nor known to stay unimported). Empty when all is well."""
    import tomllib

    device = {norm(n) for n in read_list(DEVICE_PACKAGES)}
    wheels = {norm(w.split("==")[0]): w for w in read_list(WHEELS)}
    pinned = read_list(WHEELS, "[pinned]")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    # the suite runs the federated engine, so the federated extra counts too
    deps = requirement_names(project["dependencies"] + project.get("optional-dependencies", {}).get("federated", []))
    problems = [f"asymlora needs {d}: neither on the GPU machine nor in {WHEELS.name}"
                for d in deps if d not in device and d not in wheels and d not in NOT_IMPORTED]
    for name, pin in wheels.items():
        if name in device and pin not in pinned:
            problems.append(f"{pin}: already on the GPU machine; carry it only to pin a version ([pinned])")
        try:
            needs = requirement_names(importlib.metadata.requires(name) or [])
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{pin}: not installed here, so its own needs cannot be checked")
            continue
        problems += [f"{pin} needs {d}: neither on the GPU machine nor in {WHEELS.name}"
                     for d in needs if d not in device and d not in wheels and d not in NOT_IMPORTED]
    return problems


# ---- running ---------------------------------------------------------------------------------
@dataclass
class Suite:
    sizes: Sizes
    work: Path
    out: Path
    data: Path
    dry: bool
    started: float = field(default_factory=time.time)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.started + self.sizes.budget

    @property
    def tree(self) -> Path:
        return self.work / "tree"

    def say(self, text: str) -> None:
        line = f"[gpu_suite +{time.time() - self.started:5.0f}s] {text}"
        print(line, flush=True)
        with open(self.out / "suite.log", "a", encoding="utf-8") as log:
            log.write(line + "\n")

    def run(self, label: str, cmd: list[str], deadline: float) -> str:
        """Run one command, its output appended to suite.log, killed (with its children) at the
        deadline. Returns ok, failed (exit code) or timeout."""
        left = deadline - time.time()
        if left < 5:
            self.say(f"{label}: skipped, no time left")
            return "skipped"
        self.say(f"{label}: {' '.join(cmd)} (at most {left:.0f} s)")
        t0 = time.time()
        with open(self.out / "suite.log", "a", encoding="utf-8") as log:
            # its own process group (not session), so that a deadline, or the end of this script, takes
            # its workers (compile, data loaders) with it
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)
            try:
                code = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                stop(proc)
                self.say(f"{label}: stopped at its deadline after {time.time() - t0:.0f} s")
                return "timeout"
            finally:
                stop(proc)  # this script itself was stopped (SIGTERM, Ctrl-C): no orphan keeps the GPU
        status = "ok" if code == 0 else f"failed (exit {code})"
        self.say(f"{label}: {status} in {time.time() - t0:.0f} s")
        return status

    def stamp(self, rel: str, config: dict[str, Any]) -> None:
        """suite.json in an experiment's results folder: the device, the versions and the sizes that
        made them (its results.json alone does not name the device)."""
        folder = self.tree / rel
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "suite.json").write_text(json.dumps(
            {"device": self.summary.get("device"), "versions": self.summary.get("versions"),
             "dry_run": self.dry, **config}, indent=2, default=str) + "\n", encoding="utf-8")

    def pack(self, index: int, part: str, paths: list[str]) -> None:
        """The part's result files (repository paths under tree/) into OUT/<index>-<part>.tar.gz."""
        tmp = self.work / f"{index}-{part}.tar.gz"
        with tarfile.open(tmp, "w:gz") as tar:
            for rel in paths:
                if (self.tree / rel).exists():
                    tar.add(self.tree / rel, arcname=rel)
        shutil.move(str(tmp), self.out / f"{index}-{part}.tar.gz")

    def write_summary(self) -> None:
        self.summary["wall_s"] = round(time.time() - self.started, 1)
        tmp = self.work / "summary.json"
        tmp.write_text(json.dumps(self.summary, indent=2, default=str) + "\n", encoding="utf-8")
        shutil.move(str(tmp), self.out / "summary.json")
        tmp = self.work / "summary.md"
        tmp.write_text(summary_markdown(self.summary), encoding="utf-8")
        shutil.move(str(tmp), self.out / "summary.md")


def stop(proc: subprocess.Popen) -> None:
    """End `proc` and its process group, gently first; nothing if it has ended."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def python() -> str:
    return sys.executable


def part_step_time(suite: Suite, deadline: float) -> tuple[list[str], list[str]]:
    name = f"benchmarks/results/step_time-{'cuda' if suite.sizes.device == 'cuda' else 'cpu'}.json"
    status = suite.run("step_time", [python(), "benchmarks/step_time.py", *suite.sizes.step_time,
                                     "--out", str(suite.tree / name)], deadline)
    return [status], [name, name.replace(".json", ".md")]


def part_smollm2(suite: Suite, deadline: float) -> tuple[list[str], list[str]]:
    code = "from asymlora.models import resolve; print(resolve('smollm2-135m'))"
    return [suite.run("smollm2", [python(), "-c", code], deadline)], []


def part_throughput(suite: Suite, deadline: float) -> tuple[list[str], list[str]]:
    out = suite.tree / "benchmarks" / "results"
    status = suite.run("throughput", [python(), "benchmarks/throughput.py", *suite.sizes.throughput,
                                      "--out", str(out)], deadline)
    stem = f"benchmarks/results/throughput-{'cuda' if suite.sizes.device == 'cuda' else 'cpu'}-synthetic"
    return [status], [stem + ".json", stem + ".md"]


def cli(*args: str) -> list[str]:
    return [python(), "-m", "asymlora.cli", *args]


def part_table3(suite: Suite, deadline: float, configs: dict[str, Path]) -> tuple[list[str], list[str]]:
    rel = f"experiments/flan8_crossdomain/results-{suite.sizes.tag}"
    suite.stamp(rel, {"config": yaml.safe_load(configs[f"table3-{len(TABLE3_METHODS)}"].read_text())})
    statuses = []
    for k in range(2, len(TABLE3_METHODS) + 1):
        status = suite.run(f"table3 ({', '.join(TABLE3_METHODS[:k])})",
                           cli("compare", str(configs[f"table3-{k}"]), "--no-progress"), deadline)
        statuses.append(status)
        suite.pack(3, "table3", [rel])
        if status != "ok":
            break
    return statuses, [rel]


def part_federated(suite: Suite, deadline: float, configs: dict[str, Path],
                   steps: list[str]) -> tuple[list[str], list[str]]:
    rel = f"experiments/federated/results-{suite.sizes.tag}"
    dest = suite.tree / rel
    suite.stamp(rel, {"steps": steps, "cross_task_records": suite.sizes.cross_task_records,
                      "configs": {run: yaml.safe_load(path.read_text()) for run, path in configs.items()
                                  if run in steps}})
    statuses = []
    for i, step in enumerate(steps):
        left = deadline - time.time()
        # an equal share of what is left, but at least fed_slice: the first runs get enough time to
        # say something, the later ones are skipped when none is left
        share = max(left / (len(steps) - i), suite.sizes.fed_slice)
        until = min(deadline, time.time() + share) if i < len(steps) - 1 else deadline
        if step.startswith("cross:"):
            for run in step.split(":", 1)[1].split(","):
                if not (dest / run / "results.json").is_file():
                    suite.say(f"cross_task {run}: skipped, the run has no results")
                    continue
                statuses.append(suite.run(
                    f"cross_task {run}", [python(), "experiments/federated/cross_task.py", str(configs[run]),
                                          str(suite.sizes.cross_task_records), "--out", str(dest)], until))
        else:
            statuses.append(suite.run(f"federate {step}", cli("federate", str(configs[step]), "--engine", "local"),
                                      until))
            src = suite.work / "runs" / "federated" / step
            for name in ("results.json", "results.md", "scores.png", "predictions"):
                if (src / name).is_dir():
                    shutil.copytree(src / name, dest / step / name, dirs_exist_ok=True)
                elif (src / name).is_file():
                    (dest / step).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src / name, dest / step / name)
        suite.pack(4, "federated", [rel])
    if dest.is_dir():
        tables = subprocess.run([python(), "experiments/federated/collect.py", "--results", str(dest)],
                                cwd=ROOT, capture_output=True, text=True)
        if tables.returncode == 0:
            (dest / "tables.md").write_text(tables.stdout, encoding="utf-8")
        else:
            suite.say(f"collect.py failed: {tables.stderr.strip().splitlines()[-1:]}")
        suite.pack(4, "federated", [rel])
    return statuses, [rel]


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def step_time_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 13's targets: ALoRA <= 0.95x PEFT LoRA r16's step time and <= 1.0x its peak memory at
    each shape, <= 1.05x the frozen floor at 8 x 1024."""
    out = []
    for r in rows:
        if r.get("variant") != "alora":
            continue
        shape = f"{r['batch']}x{r['seq']}"
        checks = [("time vs PEFT LoRA", r.get("time_vs_peft_lora"), 0.95),
                  ("peak memory vs PEFT LoRA", r.get("mem_vs_peft_lora"), 1.0)]
        if shape == "8x1024":
            checks.append(("time vs floor", r.get("time_vs_floor"), 1.05))
        for what, value, target in checks:
            verdict = "n/a" if value is None else ("met" if value <= target else "MISSED")
            out.append(f"ALoRA {shape} {what}: {'n/a' if value is None else f'{value:.3f}'} "
                       f"(target <= {target}): {verdict}")
    return out


def throughput_verdicts(data: dict[str, Any]) -> list[str]:
    """Target: ALoRA training >= 500k tokens/s compiled on the fast path, with the plain path's losses."""
    rows = {(r["variant"], r["path"], r["compile"]): r for r in data.get("rows", [])}
    out = []
    fast = rows.get(("alora", "fast", True))
    if fast:
        verdict = "met" if fast["tokens_per_s"] >= 500_000 else "MISSED"
        out.append(f"ALoRA compiled fast path: {fast['tokens_per_s']:.0f} tokens/s (target >= 500000): {verdict}")
    lora = rows.get(("lora", "fast", True))
    if lora:
        out.append(f"PEFT LoRA compiled fast path: {lora['tokens_per_s']:.0f} tokens/s "
                   "(320k measured compiled at 64 x 512 on an H100)")
    plain = rows.get(("alora", "plain", False))
    if fast and plain:
        gap = max((abs(a - b) for a, b in zip(fast["first_losses"], plain["first_losses"])), default=float("nan"))
        out.append(f"ALoRA first losses, compiled fast vs eager plain: {fast['first_losses']} vs "
                   f"{plain['first_losses']} (largest gap {gap:.4f})")
    return out


def part_report(suite: Suite, part: str, files: list[str]) -> dict[str, Any]:
    """What summary.md shows of a finished part: its verdicts and its tables."""
    report: dict[str, Any] = {"files": files, "verdicts": [], "tables": []}
    for rel in files:
        path = suite.tree / rel
        if rel.endswith(".md") and path.is_file():
            report["tables"].append(path.read_text(encoding="utf-8"))
        elif path.is_dir():
            for md in sorted(path.glob("**/*.md")):
                report["tables"].append(f"`{md.relative_to(suite.tree)}`\n\n" + md.read_text(encoding="utf-8"))
    if part == "step_time":
        rows = read_json(suite.tree / files[0])
        report["verdicts"] = step_time_verdicts(rows) if isinstance(rows, list) else []
    elif part == "throughput":
        data = read_json(suite.tree / files[0])
        report["verdicts"] = throughput_verdicts(data) if isinstance(data, dict) else []
    return report


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# GPU suite{' (dry run)' if summary.get('dry_run') else ''}: {summary.get('device')}", "",
             f"Versions: {json.dumps(summary.get('versions', {}))}. Budget {summary.get('budget_s')} s, "
             f"wall {summary.get('wall_s')} s.", "", "| part | status | seconds |", "|---|---|---:|"]
    for part, p in summary.get("parts", {}).items():
        lines.append(f"| {part} | {', '.join(p.get('status', []))} | {p.get('seconds', '')} |")
    for part, p in summary.get("parts", {}).items():
        report = p.get("report") or {}
        if report.get("verdicts") or report.get("tables"):
            lines += ["", f"## {part}", ""] + [f"- {v}" for v in report.get("verdicts", [])]
            for table in report.get("tables", []):
                lines += ["", table.rstrip()]
    return "\n".join(lines) + "\n"


def device_info(dry: bool) -> tuple[str, dict[str, str]]:
    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "rouge-score",
                 "nltk", "gguf"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    versions["python"] = platform.python_version()
    if not dry:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_suite: no GPU visible to torch; --dry-run runs the suite on the CPU")
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / 2 ** 30:.0f} GiB, CUDA {torch.version.cuda})", versions
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores), dry run", versions


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="every part at toy size on the CPU")
    ap.add_argument("--plan", action="store_true", help="write the configs, check the wheels, run nothing")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget", type=float, help="seconds for all parts (default 520; dry run 1500)")
    ap.add_argument("--cap", action="append", default=[], metavar="PART=SECONDS",
                    help="the most seconds one part may take (default step_time 110, smollm2 60, "
                         "throughput 230, table3 170, federated the rest)")
    ap.add_argument("--t3-epochs", type=float, help="Table 3 epochs (default 2)")
    ap.add_argument("--fed-rounds", type=int, help="federated rounds (default 10; dry run 1)")
    ap.add_argument("--fed-epochs", type=float, help="federated local epochs per round (default 1)")
    ap.add_argument("--fed-runs", help=f"federated steps in order (default {','.join(FED_STEPS)}; dry run "
                                       f"{','.join(DRY_FED_STEPS)})")
    ap.add_argument("--fed-slice", type=float, help="seconds each federated step may take at least (default 90)")
    ap.add_argument("--cross-task-records", type=int, help="Table 1 protocol: test records per task (default 50)")
    ap.add_argument("--data", type=Path, help="folder holding flan8-crossdomain/ and flan8-federated/ "
                                              "(default .gpu-suite/data, else ../shared/data)")
    ap.add_argument("--work", type=Path, help="scratch folder (default /tmp/gpu-suite[-dry])")
    ap.add_argument("--out", type=Path, help="results folder (default $OUT, else runs/gpu-suite[-dry])")
    ap.add_argument("--fresh", action="store_true",
                    help="empty the scratch folder first (by default a re-run reuses the dequantised model, "
                         "finished Table 3 runs, and resumes federated runs)")
    args = ap.parse_args(argv)

    sizes = dry_sizes(args) if args.dry_run else real_sizes(args)
    for item in args.cap:
        part, _, seconds = item.partition("=")
        if part not in sizes.caps:
            ap.error(f"--cap {item}: unknown part {part!r}; parts: {', '.join(sizes.caps)}")
        sizes.caps[part] = float(seconds)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"--parts: unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    suffix = "-dry" if args.dry_run else ""
    data = args.data or next((p for p in (ROOT / ".gpu-suite" / "data",
                                          Path(os.environ.get("ASYMLORA_SHARED_DATA", ROOT.parent / "shared" / "data")))
                              if (p / "flan8-federated").is_dir()), ROOT / ".gpu-suite" / "data")
    work = (args.work or Path(f"/tmp/gpu-suite{suffix}")).resolve()
    out = (args.out or Path(os.environ.get("OUT") or ROOT / "runs" / f"gpu-suite{suffix}")).resolve()
    fed_steps = args.fed_runs.split(",") if args.fed_runs else list(DRY_FED_STEPS if args.dry_run else FED_STEPS)

    if not args.plan and ("table3" in parts or "federated" in parts) and not (data / "flan8-federated").is_dir():
        print(f"gpu_suite: no benchmark data in {data}: run benchmarks/gpu_prepare.sh first, or give --data",
              file=sys.stderr)
        return 2
    if args.fresh:
        for sub in ("cache", "runs", "configs"):
            shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    configs = write_configs(sizes, data, work, fed_steps)
    if args.plan:
        problems = wheel_check()
        print(f"configs in {work / 'configs'}: {', '.join(sorted(configs))}")
        print("\n".join(problems) if problems else f"wheels: {', '.join(read_list(WHEELS))} cover what the GPU "
              f"machine lacks (its packages: {DEVICE_PACKAGES.name})")
        return 1 if problems else 0

    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("*.tar.gz")) + [out / "suite.log", out / "summary.json", out / "summary.md"]:
        stale.unlink(missing_ok=True)
    shutil.rmtree(work / "tree", ignore_errors=True)
    os.environ.setdefault("ASYMLORA_CACHE", str(work / "cache"))
    os.environ.setdefault("TQDM_MININTERVAL", "30")  # progress bars, but a short log
    os.environ.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      FLWR_TELEMETRY_ENABLED="0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the running command is stopped too
    suite = Suite(sizes, work, out, data, args.dry_run)
    device, versions = device_info(args.dry_run)
    suite.summary = {"device": device, "dry_run": args.dry_run, "versions": versions, "budget_s": sizes.budget,
                     "parts_asked": parts, "sizes": {k: v for k, v in vars(sizes).items()}, "parts": {}}
    suite.say(f"{device}; torch {versions['torch']}, transformers {versions['transformers']}, "
              f"peft {versions['peft']}; parts {','.join(parts)}; budget {sizes.budget:.0f} s; OUT {out}")
    suite.write_summary()

    runners: dict[str, Callable[[Suite, float], tuple[list[str], list[str]]]] = {
        "step_time": part_step_time, "smollm2": part_smollm2, "throughput": part_throughput,
        "table3": lambda s, d: part_table3(s, d, configs),
        "federated": lambda s, d: part_federated(s, d, configs, fed_steps),
    }
    order = [p for p in PARTS if p in parts]
    if any(p in NEEDS_SMOLLM2 for p in order):
        order.insert(next(i for i, p in enumerate(order) if p in NEEDS_SMOLLM2), "smollm2")
    failed = False
    for index, part in enumerate(order):
        t0 = time.time()
        deadline = min(t0 + sizes.caps[part], suite.end)
        try:
            statuses, files = runners[part](suite, deadline)
        except Exception as exc:  # a broken part must not cost the parts after it
            suite.say(f"{part}: {type(exc).__name__}: {exc}")
            statuses, files = [f"error: {exc}"], []
        except SystemExit:  # SIGTERM: the running command is stopped; say so, keep what is packed
            suite.summary["parts"][part] = {"status": ["stopped by SIGTERM"], "seconds": round(time.time() - t0, 1)}
            suite.say(f"{part}: stopped by SIGTERM; OUT holds what finished before")
            suite.write_summary()
            raise
        number = PARTS.index(part) + 1 if part in PARTS else 0
        if files:
            suite.pack(number, part, files)
        failed |= any(s != "ok" for s in statuses)
        suite.summary["parts"][part] = {"status": statuses, "seconds": round(time.time() - t0, 1),
                                        "report": part_report(suite, part, files)}
        suite.write_summary()
        if part == "smollm2" and statuses != ["ok"]:
            suite.say("SmolLM2-135M could not be prepared: the parts that need it are skipped")
            for rest in order[index + 1:]:
                suite.summary["parts"][rest] = {"status": ["skipped: no SmolLM2-135M"], "seconds": 0}
            suite.write_summary()
            break
    suite.say(f"done in {time.time() - suite.started:.0f} s; {'some parts did not finish' if failed else 'all ok'}; "
              f"results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
