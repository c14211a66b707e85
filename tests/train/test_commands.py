from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from asymlora.cli import main

from .test_compare import _config, _model_dir, _write_tasks


def run(argv):
    return main(argv)


@pytest.fixture
def setup(tmp_path):
    _write_tasks(tmp_path)
    return tmp_path, _model_dir(tmp_path)


def _train(tmp, model, method="alora", *extra):
    return run(["train", "--model", str(model), "--method", method, "--out", str(tmp / method),
                "--data", f"reverse={tmp / 'reverse-train.json'}", "--data", f"add={tmp / 'add-train.json'}",
                "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1", "--lr", "0.01", "--no-progress",
                *extra])


def test_train_evaluate_and_errors(setup, capsys):
    tmp, model = setup
    assert _train(tmp, model, "alora", "--r", "4", "--num-experts", "2", "--targets", "q_proj,v_proj") == 0
    out = capsys.readouterr().out
    assert "training alora on 8 examples of 2 task(s): add, reverse" in out
    run_rec = json.loads((tmp / "alora" / "run.json").read_text())
    assert run_rec["adapter_config"]["r"] == 4 and run_rec["adapter_config"]["num_experts"] == 2
    assert sorted(run_rec["adapter_config"]["target_modules"]) == ["q_proj", "v_proj"]
    assert run_rec["training"]["max_steps"] == 2 and run_rec["training"]["learning_rate"] == 0.01
    # a second run into the same folder without --resume is refused, with the way out in the message
    assert _train(tmp, model, "alora") == 2
    assert "pass resume=True (--resume)" in capsys.readouterr().err
    assert _train(tmp, model, "lora", "--resume") == 0  # new folder: nothing to resume, starts fresh
    assert run(["train", "--model", str(model), "--method", "lora", "--out", str(tmp / "lora"), "--resume",
                "--data", f"reverse={tmp / 'reverse-train.json'}", "--data", f"add={tmp / 'add-train.json'}",
                "--method", "alora", "--max-steps", "2", "--no-progress"]) == 2
    assert "holds a run of method 'lora'" in capsys.readouterr().err

    assert run(["evaluate", str(tmp / "alora" / "adapter"), "--data", f"reverse={tmp / 'reverse-test.json'}",
                "--data", f"add={tmp / 'add-test.json'}", "--metric", "reverse=exact,add=math",
                "--max-new-tokens", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Avg." in out
    preds = [json.loads(x) for x in (tmp / "alora" / "eval-reverse-test-add-test" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == sorted([f"reverse/reverse-test/{i}" for i in range(3)]
                                                     + [f"add/add-test/{i}" for i in range(3)])
    scores = json.loads((tmp / "alora" / "eval-reverse-test-add-test" / "scores.json").read_text())
    assert scores["kinds"] == {"reverse": "exact", "add": "math"}
    by_task = {t: [p["score"] for p in preds if p["task"] == t] for t in ("reverse", "add")}
    assert scores["per_task"] == {t: pytest.approx(sum(v) / len(v)) for t, v in by_task.items()}

    assert run(["evaluate", str(tmp / "alora"), "--data", str(tmp / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert run(["evaluate", str(tmp / "alora"), "--data", f"add={tmp / 'add-test.json'}", "--metric", "bleu"]) == 2
    assert "unknown metric 'bleu'" in capsys.readouterr().err
    assert run(["train", "--model", str(model), "--method", "alora"]) == 2
    assert "--out must be given" in capsys.readouterr().err


def test_evaluate_base_model_without_adapter_and_results_never_overwrite(setup, capsys, monkeypatch):
    tmp, model = setup
    monkeypatch.chdir(tmp)
    mc = [{"instruction": f"q{i}", "output": "", "answer": "BCDA"[i]} for i in range(4)]
    (tmp / "exam.json").write_text(json.dumps(mc))
    # the base model alone, an unknown multiple-choice set: scored by option letter, not ROUGE
    assert run(["evaluate", "--base-model", str(model), "--data", f"exam={tmp / 'exam.json'}",
                "--max-new-tokens", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "exam" in out and "option-letter accuracy, n=4" in out
    first = tmp / "runs" / "base-tiny-model" / "eval-exam"
    scores = json.loads((first / "scores.json").read_text())
    assert scores["kinds"] == {"exam": "aqua"} and scores["metrics"] == {"exam": "option-letter accuracy"}
    assert scores["adapter"] is None and scores["max_new_tokens"] == {"exam": 2}
    lo, hi = scores["ci"]["exam"]  # 95% bootstrap interval around the score, and of the average
    assert lo <= scores["per_task"]["exam"] <= hi and scores["average_ci"] == scores["ci"]["exam"]
    preds = [json.loads(x) for x in (first / "predictions.jsonl").read_text().splitlines()]
    for p in preds:  # each prediction records what the metric read from it
        assert "extracted" in p and p["score"] == (100.0 if p["extracted"] == p["gold"] else 0.0)
    # the same data with other settings gets a folder of its own; the first results stay
    before = (first / "scores.json").read_text()
    assert run(["evaluate", "--base-model", str(model), "--data", f"exam={tmp / 'exam.json'}",
                "--max-new-tokens", "3", "--no-progress"]) == 0
    assert (first / "scores.json").read_text() == before
    assert json.loads((tmp / "runs" / "base-tiny-model" / "eval-exam-2" / "scores.json").read_text())[
        "max_new_tokens"] == {"exam": 3}
    capsys.readouterr()
    # a metric the data cannot serve fails before any model is loaded, naming task, record and field
    assert run(["evaluate", "--base-model", str(tmp / "no-such-model"), "--data", f"exam={tmp / 'exam.json'}",
                "--metric", "exam=math"]) == 2
    err = capsys.readouterr().err
    assert "task 'exam', record 'exam/exam/0': metric math needs a number as gold answer, got 'B'" in err
    assert run(["evaluate", "--base-model", str(model), "--data", f"exam={tmp / 'exam.json'}",
                "--metric", "quiz=aqua"]) == 2
    assert "--metric names task(s) ['quiz'] not in the data" in capsys.readouterr().err
    assert run(["evaluate", "--data", f"exam={tmp / 'exam.json'}"]) == 2
    assert "give ADAPTER_DIR, or --base-model NAME" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp / "runs" / "base-tiny-model").iterdir()) == ["eval-exam", "eval-exam-2"]


def test_dolly_federated_layout_field_mapping_and_task_field(setup, capsys):
    tmp, model = setup
    dolly = tmp / "dolly"
    dolly.mkdir()
    rec = lambda i, kind: {"prompt": f"Say {i}.", "context": "", "reply": f"{i} said", "class": kind}  # noqa: E731
    for c, kind in enumerate(("open_qa", "brainstorming")):
        (dolly / f"local_training_{c}.json").write_text(json.dumps([rec(i, kind) for i in range(3)]))
    # the test file is global_test.json; a JSON array although .jsonl would also do
    (dolly / "global_test.json").write_text(json.dumps([rec(i, k) for i in range(2) for k in ("open_qa", "brainstorming")]))
    fmt = "instruction=prompt,input=context,output=reply"
    assert run(["evaluate", "--base-model", str(model), "--data-dir", str(dolly), "--format", fmt,
                "--task-field", "class", "--max-new-tokens", "2", "--no-progress", "--out", str(tmp / "ev")]) == 0
    scores = json.loads((tmp / "ev" / "scores.json").read_text())
    assert scores["n"] == {"open_qa": 2, "brainstorming": 2} and set(scores["metrics"].values()) == {"ROUGE-1"}
    # the same folder given to --data, and the JSON-object form of the mapping
    assert run(["evaluate", "--base-model", str(model), "--data", str(dolly), "--format", json.dumps(
        {"instruction": "prompt", "output": "reply", "task": "class"}), "--max-new-tokens", "2", "--no-progress",
        "--out", str(tmp / "ev2")]) == 0
    assert json.loads((tmp / "ev2" / "scores.json").read_text())["per_task"] == scores["per_task"]
    # train finds the clients' files in the same folder
    assert run(["train", "--model", str(model), "--method", "lora", "--out", str(tmp / "dolly-run"),
                "--data-dir", str(dolly), "--format", fmt, "--task-field", "class", "--max-steps", "1",
                "--batch-size", "2", "--grad-accum", "1", "--no-progress"]) == 0
    assert "training lora on 6 examples of 2 task(s): brainstorming, open_qa" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse refuses it: usage and the one-line reason
        run(["evaluate", "--base-model", str(model), "--data-dir", str(dolly), "--format", "output=reply"])
    assert exc.value.code == 2
    assert "--format: field mapping must name the record key for 'instruction'" in capsys.readouterr().err


def _lora_dir(tmp, model_dir):
    """A plain PEFT LoRA adapter of the tiny model, as any tool would save it."""
    from peft import LoraConfig, get_peft_model

    from . import helpers

    path = tmp / "lora-adapter"
    get_peft_model(helpers.model(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(model_dir)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("damage, message", [
    ("truncate", "a weights file cannot be read, it is truncated or not safetensors"),
    ("config", "adapter_config.json: malformed JSON at line 1"),
    ("peft_type", "adapter_config.json: unknown peft_type 'FOO'; known: "),
    ("no_config", "no adapter_config.json: not an adapter folder"),
])
def test_damaged_adapter_is_one_line(setup, capsys, damage, message):
    tmp, model = setup
    path = _lora_dir(tmp, model)
    weights, config = path / "adapter_model.safetensors", path / "adapter_config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "config":
        config.write_text('{"peft_type": "LORA", ')
    elif damage == "peft_type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "peft_type": "FOO"}))
    else:
        config.unlink()
    rc = run(["evaluate", str(path), "--data", f"add={tmp / 'add-test.json'}", "--out", str(tmp / "ev"),
              "--no-progress"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error" in ln]  # (model loading prints progress bars)
    assert rc == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not (tmp / "ev").exists()


def test_bad_training_settings_fail_before_anything_is_written(setup, capsys, monkeypatch):
    import importlib.util

    tmp, model = setup
    cfg = tmp / "c.yaml"
    cfg.write_text(f"model: {model}\ntasks: [{{name: add, train: add-train.json, test: add-test.json}}]\n"
                   "methods: [lora]\ntraining:\n  learning_rate: .nan\n")
    assert run(["train", str(cfg), "--out", str(tmp / "nan")]) == 2
    assert "learning_rate must be a finite number, got nan" in capsys.readouterr().err
    cfg.write_text(f"model: {model}\nmethods: [lora]\nmodel: other\n")
    assert run(["train", str(cfg), "--out", str(tmp / "dup")]) == 2
    assert "key 'model' appears twice (first at line 1)" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("tensorboard")
                        else real(name, *a))
    assert _train(tmp, model, "lora", "--report-to", "tensorboard") == 2
    assert "--report-to: 'tensorboard' needs the tensorboard package, which is not installed" in capsys.readouterr().err
    (tmp / "a-file").write_text("x")
    assert run(["train", "--model", str(model), "--method", "lora", "--out", str(tmp / "a-file" / "run"),
                "--data", f"add={tmp / 'add-train.json'}", "--max-steps", "1"]) == 2
    assert "--out: " + str(tmp / "a-file") + " is a file, not a folder" in capsys.readouterr().err
    assert run(["train", "--model", str(model), "--method", "lora", "--out", str(tmp / "x"),
                "--data", str(tmp / "add-train.json" / "nested.json")]) == 2
    assert not any((tmp / d).exists() for d in ("nan", "dup", "lora", "x"))


def test_ctrl_c_leaves_the_run_interrupted_and_resumable(setup, capsys, monkeypatch):
    from transformers import Trainer

    tmp, model = setup

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "training_step", interrupted)
    assert _train(tmp, model, "lora") == 130
    assert json.loads((tmp / "lora" / "run.json").read_text())["status"] == "interrupted"
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    assert _train(tmp, model, "lora", "--resume") == 0
    assert json.loads((tmp / "lora" / "run.json").read_text())["status"] == "done"
    # a finished run is extended when only the step budget grows; other changes are refused
    assert _train(tmp, model, "lora", "--resume", "--max-steps", "3") == 0
    rec = json.loads((tmp / "lora" / "run.json").read_text())
    assert rec["metrics"]["global_step"] == 3 and rec["resumed_from"].endswith("checkpoint-2")
    capsys.readouterr()
    assert _train(tmp, model, "lora", "--resume", "--max-steps", "4", "--lr", "0.5") == 2
    assert "learning_rate: 0.01 -> 0.5" in capsys.readouterr().err


def test_export_with_a_gate_and_with_mean_gates(setup, capsys):
    tmp, model = setup
    assert _train(tmp, model, "alora") == 0
    assert run(["export", str(tmp / "alora"), str(tmp / "lora-w"), "--gate", "0,1,0"]) == 0
    src = load_file(str(tmp / "alora" / "adapter" / "adapter_model.safetensors"))
    dst = load_file(str(tmp / "lora-w" / "adapter_model.safetensors"))
    key = "model.layers.1.self_attn.o_proj"
    A = next(v for k, v in src.items() if f"{key}.alora_A" in k)  # (3 r) x d, experts stacked
    B = next(v for k, v in src.items() if f"{key}.alora_B" in k)
    r = B.shape[1]
    assert torch.equal(next(v for k, v in dst.items() if f"{key}.lora_A" in k), A[r:2 * r])  # expert 2 only
    assert torch.equal(next(v for k, v in dst.items() if f"{key}.lora_B" in k), B)
    cfg = json.loads((tmp / "lora-w" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8

    assert run(["export", str(tmp / "alora"), str(tmp / "lora-mean"), "--mean-gate-data",
                str(tmp / "add-test.json")]) == 0
    gates = json.loads((tmp / "lora-mean" / "mean_gates.json").read_text())
    assert len(gates) == 4 and all(abs(sum(g) - 1) < 1e-4 and len(g) == 3 for g in gates.values())

    assert run(["export", str(tmp / "alora"), str(tmp / "x"), "--gate", "0.5,0.5"]) == 2
    assert "--gate has 2 weights but the adapter has 3 experts" in capsys.readouterr().err
    assert run(["export", str(tmp / "alora"), str(tmp / "x"), "--gate", "0.5,0.6,0"]) == 2
    assert "summing to 1" in capsys.readouterr().err
    assert run(["export", str(tmp / "alora"), str(tmp / "x")]) == 2
    assert "needs a gate" in capsys.readouterr().err
    assert run(["export", str(tmp / "alora"), str(tmp / "lora-w"), "--gate", "1,0,0"]) == 2
    assert "non-empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["export", str(tmp / "alora"), str(tmp / "x"), "--gate", "1,0,0", "--mean-gate-data", "f.json"])


def test_compare_command_reports_bad_keys(tmp_path, capsys):
    _write_tasks(tmp_path)
    path = _config(tmp_path, training={"max_step": 2})
    assert run(["compare", str(path)]) == 2
    assert "unknown key(s) ['max_step']" in capsys.readouterr().err


def test_demo_on_a_tiny_model(tmp_path, capsys):
    model = _model_dir(tmp_path)
    assert run(["demo", "--model", str(model), "--steps", "2", "--n-train", "4", "--n-test", "2",
                "--tasks", "uppercase,add", "--methods", "lora,alora", "--out", str(tmp_path / "demo"),
                "--threads", "1", "--no-progress"]) == 0
    capsys.readouterr()
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert list(res["methods"]) == ["Base", "LoRA", "ALoRA"] and res["baseline"] == "LoRA"
    assert res["tasks"] == ["uppercase", "add"] and res["meta"]["wall_seconds"] > 0
    assert (tmp_path / "demo" / "results.png").is_file()
    # held-out items: no test input was trained on
    data = tmp_path / "demo" / "data"
    for t in ("uppercase", "add"):
        train = {r["input"] for r in json.loads((data / f"{t}-train.json").read_text())}
        test = {r["input"] for r in json.loads((data / f"{t}-test.json").read_text())}
        assert len(train) == 4 and len(test) == 2 and not train & test
    # the written config is a valid comparison config
    from asymlora.train.compare import load_compare_config

    cfg = load_compare_config(data / "compare.yaml")
    assert cfg.single_task == "lora" and list(cfg.method_overrides) == ["lora", "alora"]
    assert run(["demo", "--methods", "lora,dora", "--model", str(model)]) == 2


def test_train_from_a_comparison_config(tmp_path, capsys):
    _write_tasks(tmp_path)
    path = _config(tmp_path)  # methods lora, alora; adapter r 4; max_steps 2
    assert run(["train", str(path)]) == 2
    assert "choose one with --method" in capsys.readouterr().err
    assert run(["train", str(path), "--method", "alora", "--out", str(tmp_path / "t"), "--max-steps", "3"]) == 0
    rec = json.loads((tmp_path / "t" / "run.json").read_text())
    assert rec["adapter_config"]["r"] == 4  # from the config's adapter section
    assert rec["training"]["max_steps"] == 3 and rec["training"]["learning_rate"] == 0.01  # flag over config
    assert rec["data"]["tasks"] == {"add": 4, "reverse": 4}


def test_train_fast_path_flags(setup, capsys):
    tmp, model = setup
    assert _train(tmp, model, "alora", "--packing", "--loss-chunk-size", "8", "--cutoff-len", "64") == 0
    training = json.loads((tmp / "alora" / "run.json").read_text())["training"]
    assert training["packing"] is True and training["loss_chunk_size"] == 8 and training["torch_compile"] is False
    assert _train(tmp, model, "adalora", "--loss-chunk-size", "8") == 2
    assert "loss_chunk_size is not available with adalora" in capsys.readouterr().err
    assert not (tmp / "adalora").exists()


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(setup):
    """`accelerate launch -m asymlora train ...` (docs/launch.md): the data is split between two
    processes on the CPU, half the steps each, and the main process writes the run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tmp, model = setup
    _write_tasks(tmp, n_train=12)  # 24 training examples
    accelerate = Path(sys.executable).parent / "accelerate"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", "29547", "-m", "asymlora", "train", "--model", str(model),
         "--method", "lora", "--out", str(tmp / "acc"), "--data", f"add={tmp / 'add-train.json'}",
         "--data", f"reverse={tmp / 'reverse-train.json'}", "--epochs", "1", "--batch-size", "2", "--grad-accum", "1",
         "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("training lora on 24 examples") == 2  # one line per process
    run_rec = json.loads((tmp / "acc" / "run.json").read_text())
    assert run_rec["status"] == "done" and run_rec["metrics"]["global_step"] == 6  # one process alone: 12
    assert (tmp / "acc" / "adapter" / "adapter_model.safetensors").is_file()


def test_push_to_hub_goes_through_the_trainer(setup, capsys, monkeypatch):
    """--push-to-hub / --hub-model-id reach TrainingArguments; the Hub's API is replaced at the
    network boundary (huggingface_hub.HfApi) and records what would have been sent."""
    import huggingface_hub

    tmp, model = setup
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        from pathlib import Path

        calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        if kwargs.get("run_as_future"):  # as HfApi does: a future of the commit
            from concurrent.futures import Future

            done = Future()
            done.set_result(None)
            return done

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert _train(tmp, model, "lora", "--hub-model-id", "someone/asymlora-lora", "--save-steps", "2") == 0
    run_rec = json.loads((tmp / "lora" / "run.json").read_text())
    assert run_rec["training"]["extra_args"] == {"push_to_hub": True, "hub_model_id": "someone/asymlora-lora"}
    assert calls[0] == ("create_repo", "someone/asymlora-lora")
    uploads = [c for c in calls if c[0] == "upload_folder"]
    assert uploads and all(c[1] == "someone/asymlora-lora" for c in uploads)
    assert any("adapter_model.safetensors" in c[2] for c in uploads)
