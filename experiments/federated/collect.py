"""Tables of the CPU runs next to the paper's Tables 1, 4 and 5, and of the protection runs
(markdown on stdout; the privacy-utility plot to results/dp_privacy_utility.png).

    python experiments/federated/collect.py > experiments/federated/tables.md
    python experiments/federated/collect.py --results DIR    # runs laid out as results/ (the GPU suite's)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TASKS = ["coreference", "entailment", "linguistic_acceptability", "paraphrase", "question_classification",
         "structure_to_text", "text_formatting", "word_disambiguation"]
SHORT = ["Coref", "Ent", "LAcc", "Para", "QCls", "S2T", "TFmt", "WSD"]

# The paper's numbers (LLaMA-2-7B, 10 rounds x 10 local epochs, 200 test records per task).
PAPER_T4 = {
    "Single": [73.00, 84.00, 79.00, 78.00, 94.00, 72.21, 96.64, 60.50, 79.67, None],
    "FedIT": [86.24, 86.50, 78.00, 81.00, 94.50, 72.06, 96.51, 65.00, 82.47, 8.39],
    "FedDPA": [88.51, 85.50, 73.50, 77.50, 95.50, 73.76, 96.40, 65.00, 81.96, 16.78],
    "FedSA-LoRA": [81.77, 86.00, 78.00, 75.00, 93.50, 73.34, 96.55, 65.00, 81.15, 4.19],
    "Fed-ALoRA": [85.74, 87.00, 73.50, 79.00, 94.00, 73.10, 96.24, 71.50, 82.51, 4.19],
}
PAPER_T5 = {
    "Single": [81.62, 88.00, 81.00, 79.50, 94.50, 72.07, 96.64, 60.50, 81.73, None],
    "ZeroPadding": [86.95, 87.00, 77.50, 79.50, 94.00, 72.87, 96.46, 64.00, 82.29, 49.28],
    "FLoRA": [82.03, 87.50, 75.50, 74.00, 95.50, 70.99, 96.07, 62.00, 80.45, 141.56],
    "FedSA-LoRA*": [80.26, 83.50, 76.50, 76.00, 93.00, 73.49, 96.61, 54.00, 79.17, 12.12],
    "Fed-ALoRA": [88.27, 89.50, 79.50, 77.00, 94.00, 72.35, 96.37, 63.00, 82.50, 12.12],
}
PAPER_T1 = {  # each client's model scored on all eight tasks (avg.)
    ("homogeneous", "Sharing A (FedSA-LoRA)"): [50.02, 49.78, 59.92, 42.66, 54.05, 25.21, 23.32, 49.43, 44.30],
    ("homogeneous", "Sharing B (Fed-ALoRA)"): [67.43, 67.83, 69.85, 69.26, 69.50, 60.94, 54.86, 70.90, 66.32],
    ("heterogeneous", "Sharing A (FedSA-LoRA*)"): [43.01, 41.58, 50.09, 38.34, 53.53, 24.82, 24.28, 50.41, 40.76],
    ("heterogeneous", "Sharing B (Fed-ALoRA)"): [48.38, 54.80, 58.30, 46.98, 62.15, 35.09, 31.80, 64.89, 50.30],
}
OURS = {"homogeneous": [("FedIT", "fedit-hom"), ("FedDPA (instance-wise weights)", "feddpa-hom"),
                        ("FedSA-LoRA", "fedsa-hom"), ("Fed-ALoRA", "fedalora-hom")],
        "heterogeneous": [("ZeroPadding (FedIT, padded)", "zeropadding-het"), ("FLoRA", "flora-het"),
                          ("FedSA-LoRA*", "fedsa-het"), ("Fed-ALoRA", "fedalora-het"),
                          ("Fed-ALoRA, upload: product", "fedalora-het-product")]}
FIRST = "first-runtime"  # the runs recorded before the round loop was rewritten (each client its own init)
# extra rows under a run: the same trained clients re-scored with another setting (feddpa_weighting.py)
RESCORED = {"feddpa-hom": [("FedDPA, the same clients, fixed weights (1, 1)", "weighting_fixed.json")]}


def fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def per_client(clients: dict, key: str) -> list:
    """The eight clients' `key`, None for a client missing (a run stopped early, a client that failed)."""
    return [clients.get(str(i), {}).get(key) for i in range(8)]


def mean(values: list):
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def row(name, cells) -> str:
    return "| " + " | ".join([name, *cells]) + " |"


def own_task_table(setting: str, paper: dict) -> list[str]:
    lines = [row("Method", SHORT + ["Avg.", "Params.(M) sent", "formula", "rounds"]), "|" + "---|" * 13]
    base = json.loads((RESULTS / "base.json").read_text())["clients"] if (RESULTS / "base.json").exists() else None
    if base:
        scores = [base[str(i)]["score"] for i in range(8)]
        lines.append(row("base model (no training)", [fmt(s) for s in scores] + [fmt(sum(scores) / 8), "-", "-", "0"]))
    for label, name in OURS[setting]:
        path = RESULTS / name / "results.json"
        if not path.exists():
            lines.append(row(label, ["not run"] + [""] * 11))
            continue
        s = json.loads(path.read_text())["summary"]
        scores = per_client(s["clients"], "score")
        lines.append(row(label, [fmt(x) for x in scores] + [fmt(s["avg"]), fmt(s["params_m_measured"]),
                                                             fmt(s["params_m_formula"]),
                                                             str(s["rounds_completed"])]))
        for extra, file in RESCORED.get(name, []):
            if (RESULTS / name / file).exists():
                r = json.loads((RESULTS / name / file).read_text())
                scores = per_client(r["clients"], "score")
                lines.append(row(extra, [fmt(x) for x in scores] + [fmt(r["avg"]), "-", "-", "-"]))
    lines += ["", "The paper (LLaMA-2-7B):", "", row("Method", SHORT + ["Avg.", "Params.(M)"]), "|" + "---|" * 11]
    for name, vals in paper.items():
        lines.append(row(name, [fmt(v) for v in vals]))
    return lines


# the same configuration with each client's own initial adapter and with one shared one, round by round
INIT_PAIRS = [("FedIT", "fedit-hom", "fedit-hom-shared")]


def per_round_table() -> list[str]:
    """Each round's average score (after the broadcast) and mean local training loss, own vs shared init."""
    lines = [row("Method", ["client_init", "round", "avg score", "local training loss", "clients above / tied / below own"]),
             "|" + "---|" * 6]
    for label, own_name, shared_name in INIT_PAIRS:
        runs = {}
        for init, name in (("own", own_name), ("shared", shared_name)):
            path = RESULTS / FIRST / name / "results.json"
            runs[init] = json.loads(path.read_text())["rounds"] if path.exists() else None
        if runs["own"] is None or runs["shared"] is None:
            lines.append(row(label, ["not run"] + [""] * 4))
            continue
        for init in ("own", "shared"):
            for h, o in zip(runs[init], runs["own"]):
                ev, losses = h["eval"], [t["train_loss"] for t in h["train"].values()]
                diffs = [ev[c]["score"] - o["eval"][c]["score"] for c in ev]
                above = "-" if init == "own" else \
                    f"{sum(d > 0 for d in diffs)} / {sum(d == 0 for d in diffs)} / {sum(d < 0 for d in diffs)}"
                lines.append(row(label, [init, str(h["round"]), fmt(sum(e["score"] for e in ev.values()) / len(ev)),
                                         f"{sum(losses) / len(losses):.3f}", above]))
    return lines


def cross_task_table() -> list[str]:
    lines = [row("Setting", ["Method"] + [f"Client {i + 1}" for i in range(8)] + ["Avg."]), "|" + "---|" * 11]
    for setting, pairs in (("homogeneous", [("Sharing A (FedSA-LoRA)", "fedsa-hom"),
                                            ("Sharing B (Fed-ALoRA)", "fedalora-hom")]),
                           ("heterogeneous", [("Sharing A (FedSA-LoRA*)", "fedsa-het"),
                                              ("Sharing B (Fed-ALoRA)", "fedalora-het")])):
        for label, name in pairs:
            path = RESULTS / FIRST / name / "cross_task.json"
            if path.exists():
                c = json.loads(path.read_text())["clients"]
                vals = per_client(c, "avg_all_tasks")
                lines.append(row(setting, [f"ours: {label}"] + [fmt(v) for v in vals] + [fmt(mean(vals))]))
            else:
                lines.append(row(setting, [f"ours: {label}", "not run"] + [""] * 8))
            lines.append(row(setting, [f"paper: {label}"] + [fmt(v) for v in PAPER_T1[(setting, label)]]))
    return lines


def feddpa_cross_task_table() -> list[str]:
    """FedDPA's clients on all eight tasks, instance-wise against fixed weights, and the local
    adapter's mean weight on the client's own task against the other seven."""
    dyn, fixed = RESULTS / FIRST / "feddpa-hom" / "cross_task.json", RESULTS / FIRST / "feddpa-hom" / "cross_task_fixed.json"
    if not (dyn.exists() and fixed.exists()):
        return ["not run"]
    d, f = json.loads(dyn.read_text())["clients"], json.loads(fixed.read_text())["clients"]
    lines = [row("", [f"Client {i + 1} ({SHORT[i]})" for i in range(8)] + ["Avg."]), "|" + "---|" * 10]
    for label, res in (("instance-wise weights", d), ("fixed weights (1, 1)", f)):
        vals = [res[str(i)]["avg_all_tasks"] for i in range(8)]
        lines.append(row(label, [fmt(v) for v in vals] + [fmt(sum(vals) / 8)]))
    own = [d[str(i)]["feddpa_local_weight_mean"][TASKS[i]] for i in range(8)]
    other = [sum(v for t, v in d[str(i)]["feddpa_local_weight_mean"].items() if t != TASKS[i]) / 7 for i in range(8)]
    lines.append(row("local weight, own task", [f"{w:.3f}" for w in own] + [f"{sum(own) / 8:.3f}"]))
    lines.append(row("local weight, other tasks (mean)", [f"{w:.3f}" for w in other] + [f"{sum(other) / 8:.3f}"]))
    return lines


def summary(name: str, first: bool = False):
    path = RESULTS / (FIRST if first else "") / name / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_seconds(results: dict) -> float:
    return sum(r.get("seconds") or 0.0 for r in results["rounds"])


def runtime_table() -> list[str]:
    """Each recorded row under both runtimes: time in the rounds and average score."""
    lines = [row("Run", ["first runtime (own init): s in rounds", "avg", "this runtime (shared init): s in rounds",
                         "avg", "time ratio"]), "|" + "---|" * 6]
    for setting in ("homogeneous", "heterogeneous"):
        for label, name in OURS[setting]:
            old, new = summary(name, first=True), summary(name)
            cells = []
            for r in (old, new):
                cells += ["-", "-"] if r is None else [f"{run_seconds(r):.0f}", fmt(r["summary"]["avg"])]
            ratio = f"{run_seconds(new) / run_seconds(old):.2f}" if old and new else "-"
            lines.append(row(f"{label} ({name})", cells + [ratio]))
    return lines


PROTECTED = [("no attack, fedavg", "fedalora-hom"), ("client 7 sends x100, fedavg", "byz-fedavg"),
             ("client 7 sends x100, median", "byz-median"), ("client 7 sends x100, krum (f = 1)", "byz-krum")]


def byzantine_table() -> list[str]:
    lines = [row("Fed-ALoRA (r=8)", SHORT + ["Avg.", "Avg. of clients 0-6", "rounds", "rejected updates"]),
             "|" + "---|" * 13]
    for label, name in PROTECTED:
        r = summary(name)
        if r is None:
            lines.append(row(label, ["not run"] + [""] * 11))
            continue
        scores = per_client(r["summary"]["clients"], "score")
        honest = mean(scores[:7])
        rejected = sum(len(h.get("rejected") or []) for h in r["rounds"])
        lines.append(row(label, [fmt(x) for x in scores] + [fmt(r["summary"]["avg"]), fmt(honest),
                                                             str(r["summary"]["rounds_completed"]), str(rejected)]))
    return lines


DP_RUNS = [("no DP", "fedalora-hom"), ("clipping only (z = 0)", "dp-inf"), ("epsilon 8", "dp-eps8"),
           ("epsilon 1", "dp-eps1")]


def dp_rows() -> list[dict]:
    rows = []
    for label, name in DP_RUNS:
        r = summary(name)
        if r is None:
            continue
        privacy = r["summary"].get("privacy") or {}
        norms = [n for h in r["rounds"] for n in (h.get("privacy") or {}).get("update_norms", [])]
        clipped = sum((h.get("privacy") or {}).get("clipped") or 0 for h in r["rounds"])
        rows.append({"label": label, "name": name, "epsilon": privacy.get("epsilon"),
                     "noise_multiplier": privacy.get("noise_multiplier"), "clip_norm": privacy.get("clip_norm"),
                     "delta": privacy.get("delta"), "scores": per_client(r["summary"]["clients"], "score"),
                     "avg": r["summary"]["avg"], "norm_median": sorted(norms)[len(norms) // 2] if norms else None,
                     "clipped": f"{clipped} / {len(norms)}" if norms else "-"})
    return rows


def dp_table() -> list[str]:
    lines = [row("Central DP", ["epsilon", "z", "C", "delta", "update norm (median)", "clipped"] + SHORT + ["Avg."]),
             "|" + "---|" * 16]
    for d in dp_rows():
        eps = "-" if d["epsilon"] is None else ("inf" if d["epsilon"] == float("inf") else f"{d['epsilon']:.2f}")
        cells = [eps, fmt(d["noise_multiplier"]), fmt(d["clip_norm"]),
                 "-" if d["delta"] is None else f"{d['delta']:.2e}", fmt(d["norm_median"]), d["clipped"]]
        lines.append(row(d["label"], cells + [fmt(x) for x in d["scores"]] + [fmt(d["avg"])]))
    return lines


def dp_plot(path: Path) -> bool:
    """Average score against epsilon (log scale); no DP and clipping only drawn as lines."""
    rows = dp_rows()
    if not any(d["epsilon"] not in (None, float("inf")) for d in rows):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    finite = sorted((d["epsilon"], d["avg"]) for d in rows if d["epsilon"] not in (None, float("inf")))
    ax.plot([e for e, _ in finite], [a for _, a in finite], "o-", label="central DP (z from epsilon)")
    for d, style in zip([d for d in rows if d["epsilon"] in (None, float("inf"))], ("--", ":")):
        ax.axhline(d["avg"], linestyle=style, color="grey", label=d["label"])
    base = RESULTS / "base.json"
    if base.exists():
        b = json.loads(base.read_text())["clients"]
        ax.axhline(sum(b[str(i)]["score"] for i in range(8)) / 8, color="black", lw=0.8, label="base model")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon after 3 rounds (delta = 1 / training examples)")
    ax.set_ylabel("average ROUGE-1 over 8 clients")
    ax.set_title("Fed-ALoRA, SmolLM2-135M, 8 clients: privacy and utility", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of run folders (default: results/ here)")
    RESULTS = ap.parse_args().results
    out = ["## Homogeneous (rank 8), next to Table 4", ""] + own_task_table("homogeneous", PAPER_T4)
    out += ["", "## Heterogeneous (ranks 64,64,32,32,16,16,8,8, d_m 16), next to Table 5", ""]
    out += own_task_table("heterogeneous", PAPER_T5)
    out += ["", "## One initial adapter for all clients against one each, round by round", ""] + per_round_table()
    out += ["", "## Each client on all eight tasks, next to Table 1", ""] + cross_task_table()
    out += ["", "## FedDPA on all eight tasks", ""] + feddpa_cross_task_table()
    out += ["", "## Both runtimes, run by run", ""] + runtime_table()
    out += ["", "## A Byzantine client", ""] + byzantine_table()
    out += ["", "## Central differential privacy", ""] + dp_table()
    if dp_plot(RESULTS / "dp_privacy_utility.png"):
        out += ["", "![privacy and utility](results/dp_privacy_utility.png)"]
    secagg = RESULTS / "secagg" / "secagg.md"
    out += ["", "## SecAgg+ on a loopback deployment", "", secagg.read_text().strip() if secagg.exists() else "not run"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
