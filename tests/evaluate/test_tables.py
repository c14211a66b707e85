from __future__ import annotations

import json

import pytest

from asymlora.evaluate.tables import markdown_table, plot_task_scores, results_summary, write_results

TASKS = ["CSR", "Ent", "ODQA", "Para", "RC", "Sent", "Sum", "TFmt"]
RESULTS = {  # the paper's Table 3 (three rows)
    "Single": dict(zip(TASKS, [45.15, 65.00, 75.19, 55.00, 78.00, 71.75, 28.17, 88.6])),
    "LoRA": dict(zip(TASKS, [53.19, 63.00, 84.31, 51.00, 50.50, 69.50, 32.53, 89.36])),
    "ALoRA": dict(zip(TASKS, [48.21, 62.50, 80.35, 78.50, 68.50, 75.00, 33.79, 90.20])),
}


def test_markdown_layout():
    md = markdown_table({k: RESULTS[k] for k in ("LoRA", "Single", "ALoRA")})
    lines = md.strip().splitlines()
    assert lines[0] == "| Method | " + " | ".join(TASKS) + " | Avg. | Δm% (↓) |"
    assert lines[1].startswith("|---|---:")
    # baseline row first, its Delta m% cell empty; values as in the paper
    assert lines[2] == "| Single | 45.15 | 65.00 | 75.19 | 55.00 | 78.00 | 71.75 | 28.17 | 88.60 | 63.36 |  |"
    assert lines[3].endswith("| 61.67 | 0.31 |") and lines[3].startswith("| LoRA |")
    assert lines[4].endswith("| 67.13 | -8.33 |")
    labelled = markdown_table(RESULTS, task_labels={"CSR": "Common sense"})
    assert "| Method | Common sense | Ent |" in labelled


def test_no_baseline_and_errors():
    md = markdown_table({"LoRA": RESULTS["LoRA"]}, baseline=None)
    assert "Δm%" not in md
    with pytest.raises(KeyError, match="baseline 'Single' not among methods"):
        markdown_table({"LoRA": RESULTS["LoRA"]})
    bad = {**RESULTS, "Broken": {"CSR": 1.0}}
    with pytest.raises(KeyError, match="method 'Broken': tasks"):
        results_summary(bad)


def test_summary_and_files(tmp_path):
    s = results_summary(RESULTS)
    assert s["tasks"] == TASKS and s["baseline"] == "Single"
    assert "delta_m" not in s["methods"]["Single"]
    assert round(s["methods"]["ALoRA"]["delta_m"], 2) == -8.33
    paths = write_results(tmp_path / "out", RESULTS, title="Table 3", extra={"seed": 0})
    data = json.loads(paths["json"].read_text())
    assert data["meta"] == {"seed": 0}
    assert data["methods"]["LoRA"]["scores"]["Sum"] == 32.53
    assert paths["markdown"].read_text().startswith("# Table 3\n\n| Method |")
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_alone(tmp_path):
    p = plot_task_scores(RESULTS, tmp_path / "deep" / "chart.png", title="t")
    assert p.stat().st_size > 1000


def test_zero_baseline_is_reported_not_fatal():
    res = {"Single": {"a": 0.0, "b": 50.0}, "LoRA": {"a": 10.0, "b": 40.0}}
    s = results_summary(res)
    assert s["methods"]["LoRA"]["delta_m"] is None
    assert "task 'a': baseline score is 0" in s["methods"]["LoRA"]["delta_m_note"]
    md = markdown_table(res)
    assert "| LoRA | 10.00 | 40.00 | 25.00 | n/a |" in md
    assert "Δm% undefined: task 'a': baseline score is 0" in md


def test_noise_marks_and_intervals_in_the_table():
    # 40 records a task: Single and LoRA differ on one record of "a" (noise), on 30 of "b" (real)
    single = {"a": {str(i): 100.0 * (i % 2) for i in range(40)}, "b": {str(i): 0.0 for i in range(40)}}
    lora = {"a": {**single["a"], "0": 100.0}, "b": {str(i): 100.0 * (i < 30) for i in range(40)}}
    samples = {"Single": single, "LoRA": lora}
    results = {m: {t: sum(v.values()) / 40 for t, v in s.items()} for m, s in samples.items()}
    results["Single"]["b"] = 1e-9  # Delta m% needs a non-zero baseline; the cell shows 0.00
    s = results_summary(results, samples=samples, task_metrics={"a": "ROUGE-1", "b": "math accuracy"})
    vs = s["methods"]["LoRA"]["vs"]
    assert vs["row"] == "Single"
    assert vs["per_task"]["a"]["within_noise"] is True and vs["per_task"]["b"]["within_noise"] is False
    lo, hi = s["methods"]["LoRA"]["ci"]["b"]
    assert lo < 75.0 < hi and s["uncertainty"]["seed"] == 0 and s["task_metrics"]["b"] == "math accuracy"
    md = markdown_table(results, samples=samples, task_metrics={"a": "ROUGE-1", "b": "math accuracy"},
                        baseline_caption="the single-task baselines")
    lora_line = next(ln for ln in md.splitlines() if ln.startswith("| LoRA | 52.50"))
    assert lora_line.startswith("| LoRA | 52.50 ≈ | 75.00 |")
    assert "Scores in percent: a ROUGE-1; b math accuracy." in md
    assert "Δm%: mean relative change against the single-task baselines, per task" in md
    assert "≈: the difference from Single is inside the noise" in md
    assert "| LoRA | " in md.split("95% bootstrap confidence intervals")[1]
