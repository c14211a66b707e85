from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from asymlora.metrics import delta_m
from asymlora.train.compare import compare, load_compare_config
from asymlora.train.config import ConfigError

from . import helpers


def _write_tasks(root, names=("reverse", "add"), n_train=4, n_test=3):
    """One LLM-Adapters style file per task and split, as a user would have them."""
    train, test = helpers.tasks(n_train=n_train, n_test=n_test, names=names)
    for split, exs in (("train", train), ("test", test)):
        for name in names:
            recs = [{"instruction": e.instruction, "input": e.input, "output": e.output, "answer": e.answer}
                    for e in exs if e.task == name]
            (root / f"{name}-{split}.json").write_text(json.dumps(recs))
    return train, test


def _model_dir(root):
    path = root / "tiny-model"
    helpers.model().save_pretrained(path)
    helpers.tokenizer().save_pretrained(path)
    return path


def _config(tmp_path, **changes):
    cfg = {
        "model": str(_model_dir(tmp_path)),
        "tasks": [{"name": n, "train": f"{n}-train.json", "test": f"{n}-test.json", "metric": "rouge1",
                   "label": n[:3].upper()} for n in ("reverse", "add")],
        "methods": ["lora", "alora"],
        "single_task": "lora",
        "adapter": {"r": 4},
        "training": {"max_steps": 2, "batch_size": 4, "grad_accum": 1, "learning_rate": 1e-2,
                     "progress": False, "logging_steps": 1, "cutoff_len": 64},
        "evaluation": {"batch_size": 8, "max_new_tokens": 4},
        "title": "tiny comparison",
    }
    cfg.update(changes)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_compare_end_to_end_and_cache(tmp_path):
    _, test = _write_tasks(tmp_path)
    path = _config(tmp_path)
    logs = []
    summary = compare(path, out_dir=tmp_path / "out", progress=False, log=logs.append)
    out = tmp_path / "out"
    assert summary["tasks"] == ["reverse", "add"]
    assert list(summary["methods"]) == ["Single", "LoRA", "ALoRA"]
    assert summary["baseline"] == "Single"
    single = summary["methods"]["Single"]["scores"]
    for row in ("LoRA", "ALoRA"):
        e = summary["methods"][row]
        assert e["avg"] == pytest.approx(sum(e["scores"].values()) / 2)
        if all(v > 0 for v in single.values()):
            assert e["delta_m"] == pytest.approx(delta_m(e["scores"], single))
        else:  # a zero reference score leaves Delta m% undefined, and says so
            assert e["delta_m"] is None and "baseline score is 0" in e["delta_m_note"]
    md = (out / "results.md").read_text()
    assert "| Method | REV | ADD | Avg. | Δm% (↓) |" in md
    assert (out / "results.png").stat().st_size > 1000
    # predictions: one fresh file per row, every test id exactly once, scored against its gold
    want = {}
    for name in ("reverse", "add"):  # ids are task/file/record-index, given by the file reader
        for i, e in enumerate(x for x in test if x.task == name):
            want[f"{name}/{name}-test/{i}"] = e
    for row in ("Single", "LoRA", "ALoRA"):
        lines = [json.loads(x) for x in (out / "predictions" / f"{row}.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in lines) == sorted(want)
        assert all(r["gold"] == want[r["id"]].output for r in lines)
    # 2 single-task runs + 2 multi-task runs, each in its own cache folder
    runs = summary["meta"]["runs"]
    assert len(runs["Single"]) == 2 and len(runs["LoRA"]) == 1
    assert [r["tasks"] for r in runs["Single"]] == [["reverse"], ["add"]]
    single_run = json.loads((tmp_path / "out" / "cache").joinpath(
        runs["Single"][0]["run_dir"].split("/cache/")[1], "run.json").read_text())
    assert single_run["data"]["tasks"] == {"reverse": 4} and single_run["method"] == "lora"
    # run again: every run and evaluation is reused, same numbers
    (out / "predictions" / "LoRA.jsonl").write_text("stale\n")
    again = compare(path, out_dir=out, progress=False, log=logs.append)
    assert all(r["cached"] for rows in again["meta"]["runs"].values() for r in rows)
    assert {m: e["scores"] for m, e in again["methods"].items()} == \
        {m: e["scores"] for m, e in summary["methods"].items()}
    assert "stale" not in (out / "predictions" / "LoRA.jsonl").read_text()
    # a changed hyper-parameter is a new run for the affected rows only
    path = _config(tmp_path, methods={"lora": None, "alora": {"num_experts": 2}})
    third = compare(path, out_dir=out, progress=False, log=logs.append)
    cached = {m: [r["cached"] for r in rows] for m, rows in third["meta"]["runs"].items()}
    assert cached == {"Single": [True, True], "LoRA": [True], "ALoRA": [False]}


def test_base_model_alone_and_base_row_first(tmp_path):
    _write_tasks(tmp_path, names=("uppercase",), n_train=2, n_test=4)
    tasks = [{"name": "uppercase", "train": "uppercase-train.json", "test": "uppercase-test.json"}]
    # methods: [] with include_base scores the base model alone
    path = _config(tmp_path, tasks=tasks, methods=[], single_task=None, include_base=True)
    summary = compare(path, out_dir=tmp_path / "base", progress=False, log=lambda s: None)
    assert list(summary["methods"]) == ["Base"] and summary["baseline"] is None
    assert summary["task_metrics"] == {"uppercase": "ROUGE-1"}  # free text: the data's metric
    ci = summary["methods"]["Base"]["ci"]["uppercase"]
    assert ci[0] <= summary["methods"]["Base"]["scores"]["uppercase"] <= ci[1]
    # with single-task baselines and no reference named: Base first, Delta m% against Single only
    path = _config(tmp_path, tasks=tasks, methods=["lora"], single_task="lora", include_base=True)
    summary = compare(path, out_dir=tmp_path / "both", progress=False, log=lambda s: None)
    assert list(summary["methods"]) == ["Base", "Single", "LoRA"] and summary["baseline"] == "Single"
    assert "delta_m" not in summary["methods"]["Base"] and "delta_m" in summary["methods"]["LoRA"]
    md = (tmp_path / "both" / "results.md").read_text()
    rows = [ln.split(" |")[0] for ln in md.splitlines() if ln.startswith("| ") and "Method" not in ln]
    assert rows[:3] == ["| Base", "| Single", "| LoRA"]
    assert "Δm%: mean relative change against the single-task baselines (Single: LoRA trained on each task alone)" in md
    assert "uppercase ROUGE-1" in md and "95% bootstrap confidence intervals" in md
    # without single-task baselines there is no Delta m% (not one taken against LoRA)
    path = _config(tmp_path, tasks=tasks, methods=["lora"], single_task=None, include_base=True)
    summary = compare(path, out_dir=tmp_path / "none", progress=False, log=lambda s: None)
    assert list(summary["methods"]) == ["Base", "LoRA"] and summary["baseline"] is None
    assert "Δm%" not in (tmp_path / "none" / "results.md").read_text()


def test_compare_metric_follows_the_data_and_fails_before_training(tmp_path):
    _write_tasks(tmp_path, names=("uppercase",), n_train=2, n_test=2)
    recs = [{"instruction": f"q{i}", "input": "", "output": "", "answer": "AB"[i]} for i in range(2)]
    (tmp_path / "exam.json").write_text(json.dumps(recs))
    tasks = [{"name": "exam", "train": "uppercase-train.json", "test": "exam.json", "metric": "math"}]
    path = _config(tmp_path, tasks=tasks)
    with pytest.raises(ValueError, match="task 'exam', record 'exam/exam/0': metric math needs a number"):
        compare(path, out_dir=tmp_path / "out", progress=False,
                log=lambda s: (_ for _ in ()).throw(AssertionError("trained: " + s)) if "training" in s else None)
    assert not (tmp_path / "out").exists()
    from asymlora.train.compare import load_tasks

    tasks[0].pop("metric")
    cfg = load_compare_config(_config(tmp_path, tasks=tasks))
    assert load_tasks(cfg)[0].kind == "aqua"  # the letters in `answer` decide


def test_evaluation_cache_key_of_older_runs_survives():
    """An evaluation cached when max_new_tokens was one number keeps its key when the per-metric
    lengths all resolve to that number and no later setting is used."""
    import dataclasses

    from asymlora.train.compare import EvalSettings

    legacy = {"batch_size": 16, "max_new_tokens": 32, "num_beams": 1, "heldout_loss": False}
    assert EvalSettings().cache_key({"a": 32, "b": 32}) == legacy
    assert EvalSettings(max_new_tokens=32).cache_key({"a": 32}) == legacy
    assert EvalSettings(bootstrap_seed=3).cache_key({"a": 32}) == legacy  # intervals only
    assert EvalSettings().cache_key({"a": 32, "m": 256})["max_new_tokens"] == {"a": 32, "m": 256}
    assert EvalSettings(max_prompt_tokens=64).cache_key({"a": 32})["max_prompt_tokens"] == 64
    assert set(legacy) | {"max_prompt_tokens", "bootstrap_seed"} == {f.name for f in dataclasses.fields(EvalSettings)}


def test_reference_and_base_rows(tmp_path, monkeypatch):
    _write_tasks(tmp_path, names=("uppercase",), n_train=2, n_test=2)
    path = _config(tmp_path, tasks=[{"name": "uppercase", "train": "uppercase-train.json",
                                     "test": "uppercase-test.json", "metric": "rouge1"}],
                   single_task=None, include_base=True, methods=["alora"], reference="Base",
                   evaluation={"batch_size": 8, "max_new_tokens": 4, "heldout_loss": True})
    summary = compare(path, out_dir=tmp_path / "out", progress=False, log=lambda s: None)
    assert list(summary["methods"]) == ["Base", "ALoRA"] and summary["baseline"] == "Base"
    loss = summary["meta"]["heldout_loss"]
    assert set(loss) == {"Base", "ALoRA"} and loss["Base"]["overall"] > 0
    # run again: the base model's evaluation is cached like every other row's, nothing is generated
    import asymlora.evaluate.generate as generate

    def no_generation(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(generate, "evaluate_examples", no_generation)
    again = compare(path, out_dir=tmp_path / "out", progress=False, log=lambda s: None)
    assert {m: e["scores"] for m, e in again["methods"].items()} == \
        {m: e["scores"] for m, e in summary["methods"].items()}


@pytest.mark.parametrize("change,message", [
    ({"learning_rate": 1e-3}, r"unknown key\(s\) \['learning_rate'\]"),
    ({"training": {"batch_size": "four"}}, r"training\.batch_size: expected int, got str"),
    ({"training": {"lr": 1e-3}}, r"training: unknown key\(s\) \['lr'\]"),
    ({"methods": ["lora", "dora"]}, r"methods: unknown method 'dora'"),
    ({"single_task": "full"}, r"single_task: unknown method 'full'"),
    ({"tasks": [{"name": "x", "train": "a.json"}]}, r"task 'x': give both train and test"),
    ({"tasks": [{"name": "x", "train": "a.json", "test": "b.json", "metrc": "rouge1"}]},
     r"tasks\[0\]: unknown key\(s\) \['metrc'\]"),
    ({"tasks": [{"name": "x", "train": "a.json", "test": "b.json", "metric": "bleu"}]}, r"metric: unknown metric 'bleu'"),
    ({"tasks": ["x"]}, r"task 'x' has no train/test files and the config has no data_dir"),
    ({"evaluation": {"max_new_tokens": 0}}, r"evaluation.max_new_tokens must be >= 1"),
    ({"evaluation": {"max_new_tokens": {"math": 0}}}, r"evaluation.max_new_tokens.math must be >= 1"),
    ({"methods": [], "single_task": None}, r"methods: nothing to compare"),
    ({"reference": "HydraLoRA"}, r"reference: 'HydraLoRA' is not a row"),
    ({"include_base": "yes"}, r"include_base: expected bool"),
])
def test_bad_config_is_named(tmp_path, change, message):
    path = _config(tmp_path, **change)
    with pytest.raises(ConfigError, match=message):
        load_compare_config(path)


def test_missing_task_file(tmp_path):
    path = _config(tmp_path, tasks=[{"name": "x", "train": "nope.json", "test": "nope.json"}])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        compare(path, out_dir=tmp_path / "out", progress=False, log=lambda s: None)


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    cfg = load_compare_config(path)
    assert cfg.task_specs and cfg.row_names()
    if cfg.data_dir and Path(cfg.data_dir).is_dir():  # the shared data is there: every task loads
        from asymlora.train.compare import load_tasks

        tasks = load_tasks(cfg)
        assert [t.name for t in tasks] == [s.name for s in cfg.task_specs]
        assert all(t.train and t.test for t in tasks)
        if cfg.max_test_per_task:
            assert all(len(t.test) <= cfg.max_test_per_task for t in tasks)


def test_run_keys_of_older_caches_survive_new_speed_settings():
    """A run cached before `packing` / `loss_chunk_size` existed keeps its key; setting them is a new run."""
    import hashlib
    import json

    from asymlora.data.records import Example
    from asymlora.train.compare import _run_key
    from asymlora.train.config import TrainConfig
    from asymlora.train.trainer import data_fingerprint

    examples = [Example("t/0", "t", "Say hi.", "", "hi")]
    config = TrainConfig(max_steps=3)
    legacy_training = {k: v for k, v in config.to_dict().items()
                       if k not in ("progress", "report_to", "save_steps", "save_total_limit", "logging_steps",
                                    "packing", "loss_chunk_size")}
    legacy = hashlib.sha256(json.dumps({"model": "m", "method": "alora", "adapter": {}, "training": legacy_training,
                                        "data": data_fingerprint(examples)}, sort_keys=True, default=str)
                            .encode()).hexdigest()[:12]
    assert _run_key("m", "alora", {}, config, examples) == legacy
    assert _run_key("m", "alora", {}, config.replace(packing=True), examples) != legacy
    assert _run_key("m", "alora", {}, config.replace(loss_chunk_size=64), examples) != legacy


def test_config_reference_is_generated_from_the_dataclasses():
    """docs/config.md is what the code says, and every key of every section says what it does."""
    import dataclasses

    from asymlora.train.compare import CompareConfig, EvalSettings, TaskSpec, config_reference
    from asymlora.train.config import TrainConfig, field_notes

    doc = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert doc.read_text(encoding="utf-8") == config_reference(), \
        "regenerate: python -c 'from asymlora.train.compare import config_reference as r; print(r(), end=\"\")' > docs/config.md"
    for cls in (CompareConfig, TaskSpec, TrainConfig, EvalSettings):
        notes = field_notes(cls)
        undocumented = [f.name for f in dataclasses.fields(cls) if f.init and not notes.get(f.name)]
        assert not undocumented, (cls.__name__, undocumented)
    assert field_notes(TrainConfig)["max_steps"] == "> 0 overrides num_epochs"
