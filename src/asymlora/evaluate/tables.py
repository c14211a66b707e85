"""Result tables in the paper's layout (rows = methods, one column per task, Avg., Delta m%),
their JSON form, and a grouped bar chart of per-task scores."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import write_json_atomic, write_text_atomic


__all__ = ["BASE", "results_summary", "markdown_table", "plot_task_scores", "write_results"]

Results = Mapping[str, Mapping[str, float]]  # method -> task -> score


def _task_order(results: Results, baseline: str | None, tasks: Sequence[str] | None) -> list[str]:
    if not results:
        raise ValueError("no results")
    if tasks is not None:
        order = list(tasks)
    else:
        first = results[baseline] if baseline in results else next(iter(results.values()))
        order = list(first)
    for method, scores in results.items():
        if set(scores) != set(order):
            raise KeyError(
                f"method {method!r}: tasks {sorted(scores)} differ from the table's {sorted(order)}"
            )
    return order


Samples = Mapping[str, Mapping[str, Mapping[str, float]]]  # method -> task -> record id -> score
BASE = "Base"  # the base model without adapter: the first row wherever it is


def _row_order(methods: Sequence[str], baseline: str | None) -> list[str]:
    """Base first, then the Delta m% reference, then the rest as given."""
    first = [m for m in (BASE, baseline) if m is not None and m in methods]
    return first + [m for m in methods if m not in first]


def _uncertainty(samples: Samples, order: list[str], baseline: str | None, seed: int) -> dict[str, Any]:
    """Bootstrap CIs per row and, against the baseline (else the first row), of each difference."""
    from ..metrics import bootstrap_ci, paired_differences

    out: dict[str, Any] = {}
    rows = list(samples)
    against = baseline if baseline in samples else (rows[0] if rows else None)
    for m in rows:
        per = {t: list(samples[m][t].values()) for t in order}
        ci = bootstrap_ci(per, seed=seed)
        entry: dict[str, Any] = {"ci": ci["per_task"], "avg_ci": ci["average"]}
        if m != against:
            diffs = paired_differences({t: samples[m][t] for t in order}, {t: samples[against][t] for t in order})
            dci = bootstrap_ci(diffs, seed=seed)

            def noise(interval: list[float] | None) -> bool | None:
                return None if interval is None else interval[0] <= 0.0 <= interval[1]

            entry["vs"] = {
                "row": against,
                "per_task": {t: {"ci": dci["per_task"][t], "within_noise": noise(dci["per_task"][t])} for t in order},
                "avg": {"ci": dci["average"], "within_noise": noise(dci["average"])},
            }
        out[m] = entry
    return out


def results_summary(
    results: Results,
    baseline: str | None = "Single",
    tasks: Sequence[str] | None = None,
    higher_is_better: bool | Mapping[str, bool] = True,
    samples: Samples | None = None,
    seed: int = 0,
    task_metrics: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """JSON-ready results: per-method scores, Avg., and Delta m% against the baseline row.

    `baseline` names the single-task row; None leaves Delta m% out. With `samples` (each row's
    per-record scores) every row gets 95% bootstrap CIs per task and for Avg. (seeded), and its
    difference from the baseline row (else the first row) a paired CI and `within_noise`.
    """
    from ..metrics import average, delta_m  # here: asymlora.metrics re-exports this package

    order = _task_order(results, baseline, tasks)
    has_base = baseline is not None and baseline in results
    if baseline is not None and not has_base:
        raise KeyError(f"baseline {baseline!r} not among methods {list(results)}")
    unc = _uncertainty(samples, order, baseline if has_base else None, seed) if samples else {}
    methods: dict[str, Any] = {}
    for method in _row_order(list(results), baseline if has_base else None):
        scores = results[method]
        entry: dict[str, Any] = {
            "scores": {t: float(scores[t]) for t in order},
            "avg": average({t: scores[t] for t in order}),
            **unc.get(method, {}),
        }
        if has_base and method not in (baseline, BASE):
            try:
                entry["delta_m"] = delta_m(
                    {t: scores[t] for t in order},
                    {t: results[baseline][t] for t in order},
                    higher_is_better,
                )
            except ZeroDivisionError as err:
                # a baseline of 0 (e.g. a task the small model never gets right) leaves the
                # relative change undefined; say so in the table instead of losing the run
                entry["delta_m"] = None
                entry["delta_m_note"] = str(err)
        methods[method] = entry
    out = {"tasks": order, "baseline": baseline if has_base else None, "methods": methods}
    if task_metrics:
        out["task_metrics"] = {t: task_metrics[t] for t in order}
    if samples:
        out["uncertainty"] = {"confidence": 0.95, "method": "percentile bootstrap over test records",
                              "n_resamples": 1000, "seed": seed}
    return out


def _fmt(x: float | None, decimals: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{decimals}f}"


def _cell(entry: Mapping[str, Any], task: str | None, decimals: int) -> str:
    """A score, marked ≈ where its difference from the compared row is inside the noise."""
    value = entry["scores"][task] if task is not None else entry["avg"]
    vs = entry.get("vs")
    inside = vs and (vs["per_task"][task] if task is not None else vs["avg"])["within_noise"]
    return _fmt(value, decimals) + (" ≈" if inside else "")


def markdown_table(
    results: Results,
    baseline: str | None = "Single",
    tasks: Sequence[str] | None = None,
    task_labels: Mapping[str, str] | None = None,
    higher_is_better: bool | Mapping[str, bool] = True,
    decimals: int = 2,
    samples: Samples | None = None,
    seed: int = 0,
    task_metrics: Mapping[str, str] | None = None,
    baseline_caption: str | None = None,
) -> str:
    """The paper's table as Markdown: Base first, then the baseline row (empty Delta m% cell), then
    the rest; a caption saying what scored each task and what Delta m% is taken against; with
    `samples`, scores inside the noise marked ≈ and a second table of 95% CIs."""
    summary = results_summary(results, baseline, tasks, higher_is_better, samples, seed, task_metrics)
    order = summary["tasks"]
    labels = [(task_labels or {}).get(t, t) for t in order]
    head = ["Method", *labels, "Avg."]
    if summary["baseline"] is not None:
        head.append("Δm% (↓)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for m, e in summary["methods"].items():
        cells = [m, *(_cell(e, t, decimals) for t in order), _cell(e, None, decimals)]
        if summary["baseline"] is not None:
            cells.append("n/a" if "delta_m_note" in e else _fmt(e.get("delta_m"), decimals))
        lines.append("| " + " | ".join(cells) + " |")
    caption = []
    if task_metrics:
        caption.append("Scores in percent: " + "; ".join(
            f"{lab} {task_metrics[t]}" for t, lab in zip(order, labels)) + ".")
    if summary["baseline"] is not None:
        caption.append(f"Δm%: mean relative change against {baseline_caption or summary['baseline']}, "
                       "per task; lower is better.")
    vs_rows = {e["vs"]["row"] for e in summary["methods"].values() if "vs" in e}
    if vs_rows:
        caption.append(f"≈: the difference from {vs_rows.pop()} is inside the noise (its 95% paired "
                       "bootstrap interval over the test records holds 0).")
    notes = sorted({e["delta_m_note"] for e in summary["methods"].values() if "delta_m_note" in e})
    caption.extend(f"Δm% undefined: {n}." for n in notes)
    if caption:
        lines += [""] + caption
    if samples:
        lines += ["", "95% bootstrap confidence intervals (test records resampled, seed "
                  f"{seed}):", "", "| Method | " + " | ".join([*labels, "Avg."]) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(labels) + 1)) + "|"]
        for m, e in summary["methods"].items():
            if "ci" not in e:
                continue
            cis = [e["ci"][t] for t in order] + [e["avg_ci"]]
            cells = [f"{_fmt(c[0], 1)}–{_fmt(c[1], 1)}" if c else "" for c in cis]
            lines.append("| " + " | ".join([m, *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot_task_scores(
    results: Results,
    path: str | Path,
    tasks: Sequence[str] | None = None,
    task_labels: Mapping[str, str] | None = None,
    title: str | None = None,
    ylabel: str = "score",
) -> Path:
    """Grouped bar chart: one group per task, one bar per method; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = _task_order(results, None, tasks)
    methods = list(results)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(order) + 2), 4.0))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(order))]
        ax.bar(xs, [results[m][t] for t in order], width=width, label=m)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([(task_labels or {}).get(t, t) for t in order], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", ncol=min(len(methods), 4))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(
    out_dir: str | Path,
    results: Results,
    baseline: str | None = "Single",
    tasks: Sequence[str] | None = None,
    task_labels: Mapping[str, str] | None = None,
    higher_is_better: bool | Mapping[str, bool] = True,
    title: str | None = None,
    extra: Mapping[str, Any] | None = None,
    stem: str = "results",
    samples: Samples | None = None,
    seed: int = 0,
    task_metrics: Mapping[str, str] | None = None,
    baseline_caption: str | None = None,
) -> dict[str, Path]:
    """Write `{stem}.json`, `{stem}.md` and `{stem}.png` into out_dir; returns their paths.

    `extra` (config, seeds, timings...) is stored under "meta" in the JSON.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = results_summary(results, baseline, tasks, higher_is_better, samples, seed, task_metrics)
    if extra:
        summary["meta"] = dict(extra)
    paths = {
        "json": out / f"{stem}.json",
        "markdown": out / f"{stem}.md",
        "chart": out / f"{stem}.png",
    }
    write_json_atomic(paths["json"], summary)
    md = markdown_table(results, baseline, tasks, task_labels, higher_is_better, samples=samples, seed=seed,
                        task_metrics=task_metrics, baseline_caption=baseline_caption)
    if title:
        md = f"# {title}\n\n" + md
    write_text_atomic(paths["markdown"], md)
    plot_task_scores(results, paths["chart"], summary["tasks"], task_labels, title)
    return paths
