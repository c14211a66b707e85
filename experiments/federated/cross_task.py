"""The paper's Table 1 protocol on a finished run: every client's personalised model scored on the
test records of all eight tasks (how much knowledge crossed between clients), first N per task.

    python experiments/federated/cross_task.py experiments/federated/cpu/fedalora-hom.yaml 8
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from asymlora.data.records import load_examples
from asymlora.federated.client import FederatedClient
from asymlora.federated.config import FederatedConfig


def main(config: str, per_task: int) -> None:
    cfg = FederatedConfig.from_yaml(config)
    test = load_examples(Path(cfg.data_dir) / "test.jsonl")
    seen: dict[str, int] = {}
    subset = []
    for ex in test:
        if seen.get(ex.task, 0) < per_task:
            seen[ex.task] = seen.get(ex.task, 0) + 1
            subset.append(ex)
    out = {}
    for i in range(cfg.n_clients):
        client = FederatedClient(cfg, i)   # its state after the last round, from the run's state_dir
        res = client.evaluate(examples=subset)
        client.release()
        out[str(i)] = {"avg_all_tasks": res.score, "per_task": res.per_task, "applied_round": client.applied_round}
        print(i, f"{res.score:.2f}", flush=True)
    name = Path(config).stem
    path = Path(__file__).resolve().parent / "results" / name / "cross_task.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config, "per_task": per_task, "clients": out}, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8)
