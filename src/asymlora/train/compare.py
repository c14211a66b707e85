"""`asymlora compare CONFIG`: every method on the same tasks, scored per task, in the paper's table.

One YAML file names the model, the tasks (files, format, metric), the methods and the
hyper-parameters. The driver trains a single-task baseline per task and every multi-task method,
evaluates each task on its held-out test set (generation in eval mode), and writes `results.json`,
`results.md` (one column per task, Avg., Delta m%) and `results.png`, plus one fresh predictions file
per row with every example's id.

Every run lives in `cache_dir/<kind>-<method>-<hash>/`, the hash covering everything that decides
its result (model, method, adapter and training settings, the training data's content). Running the
comparison again reuses finished runs and their evaluations, and resumes an interrupted run from its
last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..data.records import Example, check_unique_ids, load_examples, load_task_dir
from ..evaluate.scoring import MAX_NEW_TOKENS, METRIC_NAMES, check_kind, infer_task_kind, normalize_kind
from ..evaluate.tables import BASE
from ..files import check_writable_dir, write_json_atomic
from .config import ConfigError, TrainConfig, check_report_to, from_dict_strict
from .methods import METHOD_LABELS, METHODS
from .trainer import RUN_FILE, data_fingerprint, heldout_loss, load_trained, read_run, train

__all__ = [
    "TaskSpec",
    "EvalSettings",
    "CompareConfig",
    "TaskData",
    "load_compare_config",
    "load_tasks",
    "compare",
    "run_comparison",
    "SINGLE",
    "BASE",
    "config_reference",
]

SINGLE = "Single"  # the row of single-task baselines, the paper's reference for Delta m%


@dataclass
class TaskSpec:
    """One task of a comparison. With `data_dir` set in the config, `train`/`test` may be left out."""

    name: str  # the task's name (no '/'): its column, its ids, its folder under data_dir
    train: Optional[str] = None  # training records (.json/.jsonl), relative to the config's folder
    test: Optional[str] = None  # test records
    format: Union[str, dict[str, Any]] = "auto"  # auto, llm_adapters, flan, dolly, or a field mapping
    metric: str = "auto"  # auto: the data decides (option letter, number, label words, else ROUGE-1)
    label: Optional[str] = None  # column header in the table
    select: Optional[str] = None  # keep only records whose task field is this (a file of many tasks)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"task name must be non-empty and free of '/', got {self.name!r}")
        if self.metric != "auto":
            try:
                self.metric = normalize_kind(self.metric)
            except ValueError as exc:
                raise ConfigError(f"task {self.name!r}: metric: {exc} or auto") from None
        if (self.train is None) != (self.test is None):
            raise ConfigError(f"task {self.name!r}: give both train and test files, or neither (with data_dir)")


@dataclass
class EvalSettings:
    """How every row is evaluated."""

    batch_size: int = 16  # prompts generated together
    # new tokens per answer: one number, or by task / metric kind; unset: by metric (math and option
    # letters 256, else 32)
    max_new_tokens: Optional[Union[int, dict[str, int]]] = None
    num_beams: int = 1  # 1: greedy
    heldout_loss: bool = False  # also report the teacher-forced loss on each test set
    max_prompt_tokens: Optional[int] = None  # longer prompts keep their last tokens (warned); unset: 1024
    bootstrap_seed: int = 0  # seed of the 95% bootstrap confidence intervals (not part of the cache key)

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_beams", "max_prompt_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"evaluation.{name} must be >= 1, got {getattr(self, name)}")
        lengths = self.max_new_tokens if isinstance(self.max_new_tokens, dict) else {"": self.max_new_tokens}
        for key, n in lengths.items():
            if n is not None and n < 1:
                raise ConfigError(f"evaluation.max_new_tokens{'.' + key if key else ''} must be >= 1, got {n}")

    def cache_key(self, lengths: dict[str, int]) -> dict[str, Any]:
        """The settings that decide an evaluation's result; settings added later count only when
        set, so evaluations cached before them stay valid."""
        key = dataclasses.asdict(self)
        key["max_new_tokens"] = next(iter(set(lengths.values()))) if len(set(lengths.values())) == 1 else lengths
        for later in ("max_prompt_tokens", "bootstrap_seed"):
            if key[later] == getattr(EvalSettings, later):
                del key[later]
        key.pop("bootstrap_seed", None)  # the intervals, not the scores
        return key


@dataclass
class CompareConfig:
    """A comparison config (YAML): what `asymlora compare` and `asymlora train CONFIG` read."""

    model: str  # base model: a local folder, a hub name, or smollm2-135m
    tasks: list[Any]  # task names (with data_dir) or task mappings (below)
    # methods to train on all tasks together; a mapping gives each its adapter options; [] for none
    methods: Union[list[str], dict[str, Optional[dict[str, Any]]]] = field(
        default_factory=lambda: ["lora", "hydralora", "alora"])
    data_dir: Optional[str] = None  # a data folder (FLAN/federated, train/test files, or <task>/ folders)
    single_task: Optional[str] = "lora"  # method of the per-task baselines; null skips them
    reference: Optional[str] = None  # Delta m% row: default Single (the single-task baselines); none without them
    include_base: bool = False  # add a row for the base model without adapter
    adapter: dict[str, Any] = field(default_factory=dict)  # overrides for every method (target_modules...)
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    single_task_training: dict[str, Any] = field(default_factory=dict)  # changes for the baselines only
    evaluation: dict[str, Any] = field(default_factory=dict)  # evaluation settings (below)
    max_train_per_task: Optional[int] = None  # a seeded sample of at most this many training records a task
    max_test_per_task: Optional[int] = None  # a seeded sample of at most this many test records a task
    sample_seed: int = 0  # seed of those samples
    output_dir: Optional[str] = None  # results.json/.md/.png and predictions; default runs/<config name>
    cache_dir: Optional[str] = None  # finished runs and evaluations, reused; default <output_dir>/cache
    title: Optional[str] = None  # heading of results.md
    # filled in by validation
    task_specs: list[TaskSpec] = field(default_factory=list, init=False)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    train_config: TrainConfig = field(default_factory=TrainConfig, init=False)
    single_config: TrainConfig = field(default_factory=TrainConfig, init=False)
    eval_settings: EvalSettings = field(default_factory=EvalSettings, init=False)
    source: str = field(default="config", init=False)

    def validate(self, source: str = "config") -> "CompareConfig":
        """Check every section and build the typed pieces; errors name the key."""
        self.source = source
        if not self.tasks:
            raise ConfigError(f"{source}: tasks: the list is empty")
        specs = []
        for i, t in enumerate(self.tasks):
            where = f"{source}: tasks[{i}]"
            if isinstance(t, str):
                spec = TaskSpec(name=t)
            elif isinstance(t, dict):
                spec = from_dict_strict(TaskSpec, t, where)
            else:
                raise ConfigError(f"{where}: expected a task name or a mapping, got {type(t).__name__}")
            if spec.train is None and self.data_dir is None:
                raise ConfigError(f"{where}: task {spec.name!r} has no train/test files and the config has no data_dir")
            specs.append(spec)
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{source}: tasks: duplicate task name(s) {dupes}")
        self.task_specs = specs
        methods = self.methods if isinstance(self.methods, dict) else {m: {} for m in self.methods}
        if not methods and not self.single_task and not self.include_base:
            raise ConfigError(f"{source}: methods: nothing to compare (no methods, single_task null, "
                              "include_base false)")
        for m, o in methods.items():
            if m not in METHODS:
                raise ConfigError(f"{source}: methods: unknown method {m!r}; known: {sorted(METHODS)}")
            if o is not None and not isinstance(o, dict):
                raise ConfigError(f"{source}: methods.{m}: expected a mapping of adapter options")
        self.method_overrides = {m: dict(o or {}) for m, o in methods.items()}
        if self.single_task is not None and self.single_task not in METHODS:
            raise ConfigError(f"{source}: single_task: unknown method {self.single_task!r}; known: {sorted(METHODS)}")
        self.train_config = TrainConfig.from_dict(self.training, f"{source}: training")
        self.single_config = self.train_config.replace(**self.single_task_training) if self.single_task_training \
            else self.train_config
        if self.single_task_training:
            from_dict_strict(TrainConfig, {**self.train_config.to_dict(), **self.single_task_training},
                             f"{source}: single_task_training")
        self.eval_settings = from_dict_strict(EvalSettings, self.evaluation, f"{source}: evaluation")
        for key in ("max_train_per_task", "max_test_per_task"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{source}: {key} must be >= 1, got {v}")
        rows = self.row_names()
        if self.reference is not None and self.reference not in rows:
            raise ConfigError(f"{source}: reference: {self.reference!r} is not a row of this comparison; rows: {rows}")
        return self

    def row_names(self) -> list[str]:
        rows = [BASE] if self.include_base else []
        if self.single_task:
            rows.append(SINGLE)
        return rows + [METHOD_LABELS[m] for m in self.method_overrides]

    def reference_row(self) -> Optional[str]:
        """The Delta m% reference: `reference` if set, else the single-task baselines, else none."""
        if self.reference is not None:
            return self.reference
        return SINGLE if self.single_task else None


def load_compare_config(path: Union[str, Path]) -> CompareConfig:
    """Read and validate a comparison YAML; relative file paths are taken from the config's folder."""
    from ..files import read_settings

    path = Path(path)
    data = read_settings(path, "comparison config", ConfigError)
    cfg = from_dict_strict(CompareConfig, data, str(path))
    base = path.resolve().parent

    def rel(p: Optional[str]) -> Optional[str]:
        return p if p is None or Path(p).is_absolute() else str((base / p).resolve())

    if cfg.data_dir:
        cfg.data_dir = rel(cfg.data_dir)
    for t in cfg.tasks:
        if isinstance(t, dict):
            for k in ("train", "test"):
                if isinstance(t.get(k), str):
                    t[k] = rel(t[k])
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("runs") / path.stem)
    else:
        cfg.output_dir = rel(cfg.output_dir)
    if cfg.cache_dir is not None:
        cfg.cache_dir = rel(cfg.cache_dir)
    return cfg.validate(str(path))


@dataclass
class TaskData:
    """A task ready to run: its examples and how it is scored."""

    name: str
    train: list[Example]
    test: list[Example]
    metric: str = "auto"
    label: Optional[str] = None

    @property
    def kind(self) -> str:
        """The metric: the config's, or the one the test data calls for."""
        return infer_task_kind(self.name, self.test) if self.metric == "auto" else self.metric


def _subsample(examples: list[Example], n: Optional[int], seed: int, key: str) -> list[Example]:
    if n is None or len(examples) <= n:
        return examples
    keep = sorted(random.Random(f"{seed}/{key}").sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def _load_split(spec: TaskSpec, path: str, split: str) -> list[Example]:
    if spec.select is not None:
        exs = [e for e in load_examples(path, spec.format) if e.task == spec.select]
        if not exs:
            raise ValueError(f"{path}: no record of task {spec.select!r} (task {spec.name!r}, {split})")
        return [dataclasses.replace(e, task=spec.name, id=f"{spec.name}/{e.id.split('/', 1)[1]}") for e in exs]
    return load_examples(path, spec.format, task=spec.name)


def load_tasks(cfg: CompareConfig) -> list[TaskData]:
    """Every task's train and test examples, subsampled as the config asks, ids unique."""
    out = []
    dir_train = dir_test = None
    for spec in cfg.task_specs:
        if spec.train is not None:
            train_ex, test_ex = _load_split(spec, spec.train, "train"), _load_split(spec, spec.test, "test")
        else:
            if dir_train is None:
                wanted = [s.name for s in cfg.task_specs if s.train is None]
                dir_train = load_task_dir(cfg.data_dir, "train", tasks=wanted, fmt=spec.format)
                dir_test = load_task_dir(cfg.data_dir, "test", tasks=wanted, fmt=spec.format)
            train_ex = [e for e in dir_train if e.task == spec.name]
            test_ex = [e for e in dir_test if e.task == spec.name]
            if not train_ex or not test_ex:
                have = sorted({e.task for e in dir_train})
                raise ValueError(f"{cfg.data_dir}: task {spec.name!r} has {len(train_ex)} train and "
                                 f"{len(test_ex)} test examples; tasks there: {have}")
        if not train_ex:
            raise ValueError(f"task {spec.name!r}: no training examples")
        if not test_ex:
            raise ValueError(f"task {spec.name!r}: no test examples")
        train_ex = _subsample(train_ex, cfg.max_train_per_task, cfg.sample_seed, f"{spec.name}/train")
        test_ex = _subsample(test_ex, cfg.max_test_per_task, cfg.sample_seed, f"{spec.name}/test")
        out.append(TaskData(spec.name, train_ex, test_ex, spec.metric, spec.label))
    check_unique_ids([e for t in out for e in t.train + t.test])
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


_NOT_RESULT_KEYS = ("progress", "report_to", "save_steps", "save_total_limit", "logging_steps")
# Settings added after runs were first cached: they count only when set, so older caches stay valid.
_LATER_KEYS = ("packing", "loss_chunk_size")


def _run_key(model: str, method: str, adapter: dict, config: TrainConfig, examples: list[Example]) -> str:
    defaults = TrainConfig().to_dict()
    training = {k: v for k, v in config.to_dict().items()
                if k not in _NOT_RESULT_KEYS and not (k in _LATER_KEYS and v == defaults[k])}
    return _hash({"model": model, "method": method, "adapter": adapter, "training": training,
                  "data": data_fingerprint(examples)})


def _is_done(run_dir: Path) -> bool:
    try:
        return read_run(run_dir).get("status") == "done" and (run_dir / "adapter" / "adapter_config.json").is_file()
    except (FileNotFoundError, ValueError):
        return False


def run_comparison(
    model_name: str,
    base_model: Any,
    tokenizer: Any,
    tasks: list[TaskData],
    methods: dict[str, dict[str, Any]],
    out_dir: Union[str, Path],
    train_config: Optional[TrainConfig] = None,
    single_task: Optional[str] = "lora",
    single_config: Optional[TrainConfig] = None,
    adapter: Optional[dict[str, Any]] = None,
    eval_settings: Optional[EvalSettings] = None,
    reference: Optional[str] = SINGLE,
    include_base: bool = False,
    cache_dir: Union[str, Path, None] = None,
    title: Optional[str] = None,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    meta: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Train and evaluate every row, then write the results files; returns the results summary.

    `base_model` is copied for each run (adapters are injected in place), so it stays clean.
    """
    from tqdm.auto import tqdm

    from ..evaluate.generate import evaluate_examples, generation_lengths, write_predictions
    from ..evaluate.tables import write_results

    log = log or tqdm.write
    train_config = train_config or TrainConfig()
    single_config = single_config or train_config
    eval_settings = eval_settings or EvalSettings()
    adapter = dict(adapter or {})
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    if not tasks:
        raise ValueError("no tasks to compare")
    order = [t.name for t in tasks]
    kinds = {t.name: t.kind for t in tasks}
    for t in tasks:  # a metric the data cannot serve fails before anything is trained
        check_kind(t.name, kinds[t.name], t.test)
    lengths = generation_lengths(kinds, eval_settings.max_new_tokens)
    all_train = [e for t in tasks for e in t.train]

    # (row, method, run-key examples, config, tasks evaluated with it)
    plan: list[tuple[str, Optional[str], list[Example], TrainConfig, list[TaskData]]] = []
    if include_base:
        plan.append((BASE, None, [], train_config, tasks))
    if single_task:
        for t in tasks:
            plan.append((SINGLE, single_task, t.train, single_config, [t]))
    for m in methods:
        plan.append((METHOD_LABELS[m], m, all_train, train_config, tasks))

    scores: dict[str, dict[str, float]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, Any] = {}
    losses: dict[str, dict[str, Any]] = {}
    bar = tqdm(plan, desc="compare", unit="run", disable=not progress, position=0)
    for row, method, train_ex, config, eval_tasks in bar:
        label = row if row != SINGLE else f"{SINGLE}:{eval_tasks[0].name}"
        bar.set_postfix_str(label)
        test_ex = [e for t in eval_tasks for e in t.test]
        started = time.time()
        if method is None:  # the base model: nothing to train, but its evaluation is cached too
            model, run_dir, cached = base_model, cache / f"base-{_hash({'model': model_name})}", False
        else:
            overrides = {**adapter, **methods.get(method, {})} if row != SINGLE else dict(adapter)
            key = _run_key(model_name, method, overrides, config, train_ex)
            kind = "single-" + eval_tasks[0].name if row == SINGLE else "multi"
            run_dir = cache / f"{kind}-{method}-{key}"
            cached = _is_done(run_dir)
            if cached:
                log(f"[{label}] reusing the finished run in {run_dir}")
                model, _, _ = load_trained(run_dir, base_model=copy.deepcopy(base_model), tokenizer=tokenizer)
            else:
                resume = (run_dir / RUN_FILE).is_file()
                log(f"[{label}] training {METHOD_LABELS[method]} on {len(train_ex)} examples"
                    f"{' (resuming)' if resume else ''} -> {run_dir}")
                res = train(copy.deepcopy(base_model), tokenizer, train_ex, method, run_dir, config=config,
                            adapter=overrides, resume=resume, task_names=sorted({e.task for e in train_ex}),
                            data_info={"model_name": model_name})
                model = res.model
        eval_key = _hash({"eval": eval_settings.cache_key(lengths), "kinds": kinds,
                          "test": data_fingerprint(test_ex), "template": config.template})
        eval_file = run_dir / f"eval-{eval_key}.json" if run_dir is not None else None
        if eval_file is not None and eval_file.is_file():
            cached_eval = json.loads(eval_file.read_text(encoding="utf-8"))
            per_task, recs, loss = cached_eval["per_task"], cached_eval["records"], cached_eval.get("loss")
        else:
            result = evaluate_examples(model, tokenizer, test_ex, kinds=kinds, template=config.template,
                                       batch_size=eval_settings.batch_size,
                                       max_new_tokens=lengths, num_beams=eval_settings.num_beams,
                                       progress=progress, max_prompt_tokens=eval_settings.max_prompt_tokens or 1024)
            per_task, recs = result.per_task, result.records
            loss = None
            if eval_settings.heldout_loss:
                overall, per = heldout_loss(model, tokenizer, test_ex, config.template, config.cutoff_len,
                                            eval_settings.batch_size)
                loss = {"overall": overall, "per_task": per}
            if eval_file is not None:
                # whole or absent: the next run trusts this cache
                write_json_atomic(eval_file, {"per_task": per_task, "records": recs, "loss": loss}, indent=1)
        scores.setdefault(row, {}).update(per_task)
        records.setdefault(row, []).extend(recs)
        if loss is not None:
            if row == SINGLE:
                losses.setdefault(row, {"per_task": {}})["per_task"].update(loss["per_task"])
            else:
                losses[row] = loss
        runs.setdefault(row, []).append({"run_dir": str(run_dir) if run_dir else None, "cached": cached,
                                         "tasks": [t.name for t in eval_tasks],
                                         "seconds": round(time.time() - started, 1)})
        log(f"[{label}] " + ", ".join(f"{t} {s:.2f}" for t, s in per_task.items()))
        if model is not base_model:
            del model

    pred_dir = out / "predictions"
    pred_files = {}
    for row, recs in records.items():
        pred_files[row] = str(write_predictions(pred_dir / f"{row}.jsonl", recs))
    labels = {t.name: t.label for t in tasks if t.label}
    meta_out = {"model": model_name, "runs": runs, "predictions": pred_files, "task_kinds": kinds,
                "max_new_tokens": lengths,
                "n_train": {t.name: len(t.train) for t in tasks}, "n_test": {t.name: len(t.test) for t in tasks},
                "training": train_config.to_dict(), "evaluation": dataclasses.asdict(eval_settings),
                **({"heldout_loss": losses} if losses else {}), **dict(meta or {})}
    if reference is not None and reference not in scores:
        raise ValueError(f"reference row {reference!r} was not run; rows: {list(scores)}")
    samples = {row: {t: {r["id"]: r["score"] for r in recs if r["task"] == t} for t in order}
               for row, recs in records.items()}
    caption = (f"the single-task baselines ({SINGLE}: {METHOD_LABELS[single_task]} trained on each task alone)"
               if reference == SINGLE and single_task else None)
    paths = write_results(out, scores, baseline=reference, tasks=order, task_labels=labels or None,
                          title=title, extra=meta_out, samples=samples, seed=eval_settings.bootstrap_seed,
                          task_metrics={t: METRIC_NAMES[k] for t, k in kinds.items()}, baseline_caption=caption)
    summary = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
    summary["files"] = {k: str(v) for k, v in paths.items()}
    return summary


def compare(config: Union[CompareConfig, str, Path], out_dir: Union[str, Path, None] = None,
            progress: bool = True, log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Run the comparison a config describes (see the module docstring); returns the results summary."""
    import torch
    from tqdm.auto import tqdm

    from ..models import load_model

    log = log or tqdm.write
    cfg = load_compare_config(config) if isinstance(config, (str, Path)) else config.validate(config.source)
    out = Path(out_dir or cfg.output_dir or "runs/compare")
    check_report_to(cfg.train_config.report_to, f"{cfg.source}: training.report_to")
    check_writable_dir(out, "output folder")
    tasks = load_tasks(cfg)
    log("tasks: " + ", ".join(f"{t.name} ({len(t.train)} train / {len(t.test)} test, {t.kind})" for t in tasks))
    base_model, tokenizer = load_model(cfg.model, device="cuda" if torch.cuda.is_available() else None)
    return run_comparison(
        cfg.model, base_model, tokenizer, tasks, cfg.method_overrides, out,
        train_config=cfg.train_config, single_task=cfg.single_task, single_config=cfg.single_config,
        adapter=cfg.adapter, eval_settings=cfg.eval_settings, reference=cfg.reference_row(),
        include_base=cfg.include_base, cache_dir=cfg.cache_dir, title=cfg.title, progress=progress, log=log,
        meta={"config": cfg.source},
    )


def config_reference() -> str:
    """docs/config.md: every key of a comparison / training config, from the dataclasses that read it."""
    from .config import settings_table

    return (
        "# Config reference: `asymlora compare CONFIG` and `asymlora train CONFIG`\n\n"
        "Generated from the dataclasses that read these files (`asymlora.train.compare.config_reference()`; "
        "a test keeps this file equal to it). An unknown key or a wrongly typed value is an error naming "
        "the key; a key given twice is an error naming both lines.\n\n"
        "## Top level\n\n" + settings_table(CompareConfig) +
        "\n## `tasks[]` (a task name, or a mapping)\n\n" + settings_table(TaskSpec, "tasks[].") +
        "\n## `training` (and `single_task_training`, which changes it for the baselines)\n\n"
        + settings_table(TrainConfig, "training.") +
        "\n## `evaluation`\n\n" + settings_table(EvalSettings, "evaluation.") +
        "\nMetrics (`tasks[].metric`, `asymlora evaluate --metric`): " +
        ", ".join(f"`{k}` ({v})" for k, v in METRIC_NAMES.items()) +
        "; `option` is `aqua`, `label` is `commonsense`, `rouge` is `rouge1`. New tokens by metric: " +
        ", ".join(f"{k} {n}" for k, n in MAX_NEW_TOKENS.items()) + ".\n"
    )
