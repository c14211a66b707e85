"""A finished FedDPA run re-scored with the other inference weighting: the same trained clients (their
state after the last round), the same test records, only the adapters' weights differ. The run
itself evaluates with `feddpa_weighting` of its config (dynamic by default); this scores `fixed`
(the training weights 1 and 1), or the other way round, without training anything.

    python experiments/federated/feddpa_weighting.py experiments/federated/cpu/feddpa-hom.yaml fixed
"""

from __future__ import annotations

import sys
from pathlib import Path

from asymlora.federated.client import FederatedClient
from asymlora.federated.config import FederatedConfig
from asymlora.files import write_json_atomic


def main(config: str, weighting: str) -> None:
    cfg = FederatedConfig.from_yaml(config)
    if cfg.method != "feddpa":
        raise ValueError(f"{config}: method is {cfg.method!r}, not feddpa")
    cfg.feddpa_weighting = weighting
    cfg.validate()
    out = {}
    for i in range(cfg.n_clients):
        client = FederatedClient(cfg, i)   # its state after the last round, from the run's state_dir
        res = client.evaluate()
        client.release()
        out[str(i)] = {"score": res.score, "per_task": res.per_task, "applied_round": client.applied_round,
                       **res.metrics}
        print(i, f"{res.score:.2f}", flush=True)
    avg = sum(c["score"] for c in out.values()) / len(out)
    path = Path(__file__).resolve().parent / "results" / Path(config).stem / f"weighting_{weighting}.json"
    write_json_atomic(path, {"config": config, "feddpa_weighting": weighting, "avg": avg, "clients": out})
    print(f"avg {avg:.2f} -> {path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "fixed")
