"""What a federated run reports: per-client scores per round, a table in the layout of the paper's
Tables 4-5 (one column per client's task, Avg., Params.(M)), a plot of each client's score per
round, and results.json. Params.(M) is measured from the tensors that crossed the wire and printed
beside the formula of `comm.comm_cost`, so a discrepancy shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..files import write_json_atomic, write_text_atomic
from .comm import _DISPLAY, comm_cost
from .config import FederatedConfig


def model_config_dict(cfg: FederatedConfig) -> dict[str, Any]:
    from transformers import AutoConfig

    from ..models import resolve

    return AutoConfig.from_pretrained(resolve(cfg.model)).to_dict()


def formula_comm(cfg: FederatedConfig, model_config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """comm_cost for this run's model, targets, method and ranks (per client per round)."""
    model_config = model_config if model_config is not None else model_config_dict(cfg)
    report = comm_cost(model_config, cfg.adapter.target_modules, cfg.method, cfg.client_ranks,
                       dm=cfg.d_m if cfg.uses_decomposition else None, num_clients=cfg.n_clients,
                       upload=cfg.upload)
    return {"total_params": report.total_params, "wire_total_params": report.wire_total_params,
            "paper_total_params": report.paper_total_params, "upload_params": report.wire_upload_params,
            "download_params": report.wire_download_params, "notes": report.notes}


def method_label(cfg: FederatedConfig) -> str:
    name = _DISPLAY[cfg.method] + ("*" if cfg.method == "fedsa" and cfg.uses_decomposition else "")
    ranks = sorted(set(cfg.client_ranks), reverse=True)
    return f"{name} (r={','.join(map(str, ranks))}" + (f", d_m={cfg.d_m})" if cfg.uses_decomposition else ")")


def protection_note(cfg: FederatedConfig) -> str:
    """The aggregation rule and the simulated attack, when they are not plain FedAvg without one."""
    rule = cfg.aggregation_rule
    parts = []
    if rule.name != "fedavg":
        params = {"trimmed_mean": f"trim {rule.trim_fraction:g}", "krum": f"f = {rule.byzantine}",
                  "multikrum": f"f = {rule.byzantine}, keep {rule.keep or 'n - f'}",
                  "bulyan": f"f = {rule.byzantine}"}.get(rule.name)
        parts.append(rule.name + (f" ({params})" if params else ""))
    attack = cfg.attack
    if attack is not None:
        parts.append(f"{'fedavg, ' if rule.name == 'fedavg' else ''}simulated attack: clients "
                     f"{','.join(map(str, attack.clients))} send {attack.kind} uploads"
                     + (f" (factor {attack.factor:g})" if attack.factor is not None else ""))
    return "; ".join(parts)


def wire_traffic(record: Mapping[str, Any]) -> Optional[dict[str, float]]:
    """Per client, the parameters and bytes of one round that crossed the wire in messages: the
    mean upload over the clients that sent one, the mean download of the round's broadcast over
    the clients that received it."""
    wire = record.get("wire")
    if not wire or not wire.get("upload"):
        return None
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    up, down = list(wire["upload"].values()), list(wire.get("download", {}).values())
    out = {"upload_params": mean([p for p, _ in up]), "upload_bytes": mean([b for _, b in up]),
           "download_params": mean([p for p, _ in down]), "download_bytes": mean([b for _, b in down])}
    out["total_params"] = out["upload_params"] + out["download_params"]
    out["total_bytes"] = out["upload_bytes"] + out["download_bytes"]
    return out


def summarise(cfg: FederatedConfig, history: Sequence[Mapping[str, Any]],
              model_config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    evaluated = [h for h in history if h.get("eval")]
    last = evaluated[-1] if evaluated else None
    clients: dict[str, Any] = {}
    if last:
        for cid, e in sorted(last["eval"].items(), key=lambda kv: int(kv[0])):
            clients[cid] = {"tasks": sorted(e["per_task"]), "score": e["score"], "per_task": e["per_task"],
                            **{k: v for k, v in e.items() if k.startswith("feddpa_")}}
    comm_rounds = [w for h in history if h.get("comm") and (w := wire_traffic(h))]
    full = [w for h in history if h.get("comm") and len(h.get("accepted", [])) == cfg.n_clients
            and (w := wire_traffic(h))]
    measured = (full or comm_rounds)
    formula = formula_comm(cfg, model_config)
    summary: dict[str, Any] = {
        "method": cfg.method, "label": method_label(cfg), "heterogeneous": cfg.is_heterogeneous,
        "client_init": cfg.client_init, "aggregation": protection_note(cfg) or "fedavg",
        "ranks": cfg.client_ranks, "d_m": cfg.d_m if cfg.uses_decomposition else None,
        "rounds_completed": len(history), "rounds_failed": [h["round"] for h in history if h.get("failed")],
        "final_round": last["round"] if last else None, "clients": clients,
        "avg": (sum(c["score"] for c in clients.values()) / len(clients)) if clients else None,
        "params_m_measured": (sum(c["total_params"] for c in measured) / len(measured) / 1e6) if measured else None,
        "params_m_measured_rounds": "full participation" if full else ("partial participation" if measured else None),
        "params_m_formula": formula["wire_total_params"] / 1e6,
        "params_m_paper_convention": formula["total_params"] / 1e6,
        "formula_notes": formula["notes"],
        "privacy": next((h["privacy"] for h in reversed(history) if h.get("privacy")), None),
    }
    return summary


def _fmt(x: Optional[float], nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _fmt_m(x: Optional[float]) -> str:
    """Millions of parameters: the paper's two decimals, more for toy models."""
    if x is None:
        return "-"
    return f"{x:.2f}" if x >= 0.1 else f"{x:.6f}"


def markdown(cfg: FederatedConfig, summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    clients = summary["clients"]
    heads = [f"c{cid} {'/'.join(c['tasks'])}" for cid, c in clients.items()]
    lines = [f"# {summary['label']}: {cfg.n_clients} clients, {summary['rounds_completed']} rounds", "",
             f"Scores after round {summary['final_round']} (each client's own task, personalised model; "
             "ROUGE-1 or accuracy, %). Params.(M): per client per round, upload + download. Initial adapters: "
             + ("one shared draw (client_init: shared)." if cfg.client_init == "shared"
                else "one draw per client (client_init: own).")
             + (f" Aggregation: {protection_note(cfg)}." if protection_note(cfg) else ""), "",
             "| Method | " + " | ".join(heads) + " | Avg. | Params.(M) sent | Params.(M) formula | paper's count |",
             "|" + "---|" * (len(heads) + 5)]
    cells = [summary["label"], *(_fmt(c["score"]) for c in clients.values()), _fmt(summary["avg"]),
             _fmt_m(summary["params_m_measured"]), _fmt_m(summary["params_m_formula"]),
             _fmt_m(summary["params_m_paper_convention"])]
    lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per round", "", "| round | clients | accepted | rejected | loss | avg score |", "|---|---|---|---|---|---|"]
    for h in history:
        losses = [t["train_loss"] for t in h.get("train", {}).values() if "train_loss" in t]
        ev = h.get("eval") or {}
        avg = sum(e["score"] for e in ev.values()) / len(ev) if ev else None
        rej = "; ".join(f"c{r['client']}: {r['reason'][:80]}" for r in h.get("rejected", [])) or "-"
        if h.get("failed"):
            rej = f"ROUND FAILED: {h['failed'][:120]}"
        lines.append(f"| {h['round']} | {','.join(map(str, h.get('participants', [])))} | "
                     f"{','.join(map(str, h.get('accepted', [])))} | {rej} | "
                     f"{_fmt(sum(losses) / len(losses) if losses else None, 3)} | {_fmt(avg)} |")
    weighted = {cid: c for cid, c in clients.items() if "feddpa_local_weight_mean" in c}
    if weighted:
        lines.append("\nFedDPA, instance-wise weighting: the local adapter's weight per test instance (training "
                     "weight 1; the global adapter's is 2 minus it), mean (min-max) per client: "
                     + "; ".join(f"c{cid} {c['feddpa_local_weight_mean']:.3f} ({c['feddpa_local_weight_min']:.3f}-"
                                 f"{c['feddpa_local_weight_max']:.3f})" for cid, c in weighted.items()) + ".")
    privacy = [h for h in history if h.get("privacy")]
    if privacy:
        p = privacy[-1]["privacy"]
        lines += ["", f"## Differential privacy ({p['mode']}, clipping {p['clipping']}, noise multiplier "
                      f"{p['noise_multiplier']:g}, sample rate {p['sample_rate']:.3g}; RDP accountant)", "",
                  "| round | epsilon | delta | clipping norm |", "|---|---|---|---|"]
        lines += [f"| {h['round']} | {h['privacy']['epsilon']:.4g} | {h['privacy']['delta']:g} | "
                  f"{h['privacy']['clip_norm']:.4g} |" for h in privacy]
    for note in summary.get("formula_notes", []):
        lines.append(f"\nNote: {note}.")
    return "\n".join(lines) + "\n"


def plot_scores(history: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """One line per client: its score on its own task after each evaluated round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float], str]] = {}
    for h in history:
        for cid, e in (h.get("eval") or {}).items():
            xs, ys, _ = series.setdefault(cid, ([], [], "/".join(sorted(e["per_task"]))))
            xs.append(int(h["round"]))
            ys.append(float(e["score"]))
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for cid in sorted(series, key=int):
        xs, ys, task = series[cid]
        ax.plot(xs, ys, marker="o", label=f"client {cid} ({task})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("score (%)")
    if title:
        ax.set_title(title)
    if series:
        ax.legend(fontsize="small", loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(cfg: FederatedConfig, history: Sequence[Mapping[str, Any]], out_dir: Optional[Path] = None,
                  model_config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """results.json, results.md and scores.png in the output directory; returns the summary."""
    out = Path(out_dir or cfg.output_dir)
    summary = summarise(cfg, history, model_config)
    write_json_atomic(out / "results.json", {"summary": summary, "config": cfg.to_dict(), "rounds": list(history)})
    write_text_atomic(out / "results.md", markdown(cfg, summary, history))
    plot_scores(history, out / "scores.png", title=summary["label"])
    return summary
