"""Result tables in the paper's layout (rows = methods, one column per task, Avg., Delta m%),
their JSON form, and a grouped bar chart of per-task scores."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import write_json_atomic


__all__ = ["results_summary", "markdown_table", "plot_task_scores", "write_results"]

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


def results_summary(
    results: Results,
    baseline: str | None = "Single",
    tasks: Sequence[str] | None = None,
    higher_is_better: bool | Mapping[str, bool] = True,
) -> dict[str, Any]:
    """JSON-ready results: per-method scores, Avg., and Delta m% against the baseline row.

    `baseline` names the single-task row; None (or a name not in `results`) leaves Delta m% out.
    """
    from ..metrics import average, delta_m  # here: asymlora.metrics re-exports this package

    order = _task_order(results, baseline, tasks)
    has_base = baseline is not None and baseline in results
    if baseline is not None and not has_base:
        raise KeyError(f"baseline {baseline!r} not among methods {list(results)}")
    methods: dict[str, Any] = {}
    for method, scores in results.items():
        entry: dict[str, Any] = {
            "scores": {t: float(scores[t]) for t in order},
            "avg": average({t: scores[t] for t in order}),
        }
        if has_base and method != baseline:
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
    return {"tasks": order, "baseline": baseline if has_base else None, "methods": methods}


def _fmt(x: float | None, decimals: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{decimals}f}"


def markdown_table(
    results: Results,
    baseline: str | None = "Single",
    tasks: Sequence[str] | None = None,
    task_labels: Mapping[str, str] | None = None,
    higher_is_better: bool | Mapping[str, bool] = True,
    decimals: int = 2,
) -> str:
    """The paper's table as Markdown; the baseline row comes first with an empty Delta m% cell."""
    summary = results_summary(results, baseline, tasks, higher_is_better)
    order = summary["tasks"]
    labels = [(task_labels or {}).get(t, t) for t in order]
    head = ["Method", *labels, "Avg."]
    if summary["baseline"] is not None:
        head.append("Δm% (↓)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    methods = list(summary["methods"])
    if summary["baseline"] is not None:
        methods.remove(summary["baseline"])
        methods.insert(0, summary["baseline"])
    for m in methods:
        e = summary["methods"][m]
        cells = [m, *(_fmt(e["scores"][t], decimals) for t in order), _fmt(e["avg"], decimals)]
        if summary["baseline"] is not None:
            cells.append("n/a" if "delta_m_note" in e else _fmt(e.get("delta_m"), decimals))
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({e["delta_m_note"] for e in summary["methods"].values() if "delta_m_note" in e})
    if notes:
        lines.append("")
        lines.extend(f"Δm% undefined: {n}." for n in notes)
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
) -> dict[str, Path]:
    """Write `{stem}.json`, `{stem}.md` and `{stem}.png` into out_dir; returns their paths.

    `extra` (config, seeds, timings...) is stored under "meta" in the JSON.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = results_summary(results, baseline, tasks, higher_is_better)
    if extra:
        summary["meta"] = dict(extra)
    paths = {
        "json": out / f"{stem}.json",
        "markdown": out / f"{stem}.md",
        "chart": out / f"{stem}.png",
    }
    write_json_atomic(paths["json"], summary)
    md = markdown_table(results, baseline, tasks, task_labels, higher_is_better)
    if title:
        md = f"# {title}\n\n" + md
    paths["markdown"].write_text(md, encoding="utf-8")
    plot_task_scores(results, paths["chart"], summary["tasks"], task_labels, title)
    return paths
