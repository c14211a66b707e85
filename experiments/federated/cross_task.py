"""The paper's Table 1 protocol on a finished run: every client's personalised model scored on the
test records of all eight tasks (how much knowledge crossed between clients), first N per task.

    python experiments/federated/cross_task.py experiments/federated/cpu/fedalora-hom.yaml 8
    python experiments/federated/cross_task.py experiments/federated/cpu/feddpa-hom.yaml 8 fixed
    python experiments/federated/cross_task.py RUN.yaml 200 --out DIR    # DIR/<config name>/cross_task.json

FedDPA is scored one task at a time, so that the local adapter's instance-wise weight is recorded
per task (its own task against the others); a third argument overrides `feddpa_weighting` and
writes `cross_task_<weighting>.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from asymlora.data.records import load_examples
from asymlora.federated.client import FederatedClient
from asymlora.federated.config import FederatedConfig
from asymlora.files import write_json_atomic


RESULTS = Path(__file__).resolve().parent / "results"


def main(config: str, per_task: int, weighting: Optional[str] = None, out_dir: Path = RESULTS) -> None:
    cfg = FederatedConfig.from_yaml(config)
    if weighting is not None:
        cfg.feddpa_weighting = weighting
        cfg.validate()
    test = load_examples(Path(cfg.data_dir) / "test.jsonl")
    by_task: dict[str, list] = {}
    for ex in test:
        if len(by_task.setdefault(ex.task, [])) < per_task:
            by_task[ex.task].append(ex)
    subset = [ex for exs in by_task.values() for ex in exs]
    out = {}
    for i in range(cfg.n_clients):
        client = FederatedClient(cfg, i)   # its state after the last round, from the run's state_dir
        if cfg.method == "feddpa":
            per, weights = {}, {}
            for task, exs in sorted(by_task.items()):
                res = client.evaluate(examples=exs)
                per[task] = res.per_task[task]
                if res.metrics:
                    weights[task] = res.metrics["feddpa_local_weight_mean"]
            out[str(i)] = {"avg_all_tasks": sum(per.values()) / len(per), "per_task": per,
                           "applied_round": client.applied_round, "feddpa_local_weight_mean": weights}
        else:
            res = client.evaluate(examples=subset)
            out[str(i)] = {"avg_all_tasks": res.score, "per_task": res.per_task, "applied_round": client.applied_round}
        client.release()
        print(i, f"{out[str(i)]['avg_all_tasks']:.2f}", out[str(i)].get("feddpa_local_weight_mean", ""), flush=True)
    name = Path(config).stem
    file = "cross_task.json" if weighting is None else f"cross_task_{weighting}.json"
    path = Path(out_dir) / name / file
    write_json_atomic(path, {"config": config, "per_task": per_task, "feddpa_weighting": cfg.feddpa_weighting
                             if cfg.method == "feddpa" else None, "clients": out})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("per_task", nargs="?", type=int, default=8, help="test records per task (first N)")
    ap.add_argument("weighting", nargs="?", default=None, help="FedDPA: override feddpa_weighting")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: results/ here)")
    a = ap.parse_args()
    main(a.config, a.per_task, a.weighting, a.out)
