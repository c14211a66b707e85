"""Each client's score with the untrained base model (every adapter starts with B = 0, so a client's
initial model is the base model), under the evaluation settings of a CPU config.

    python experiments/federated/base_scores.py experiments/federated/cpu/fedit-hom.yaml
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from asymlora.federated.client import FederatedClient
from asymlora.federated.config import FederatedConfig
from asymlora.files import write_json_atomic


def main(config: str) -> None:
    cfg = FederatedConfig.from_yaml(config)
    cfg.state_dir = tempfile.mkdtemp(prefix="asymlora-base-")
    try:
        scores = {}
        for i in range(cfg.n_clients):
            client = FederatedClient(cfg, i)
            res = client.evaluate()
            client.release()
            scores[str(i)] = {"score": res.score, "per_task": res.per_task, "num_examples": res.num_examples}
            print(i, res.per_task, flush=True)
    finally:
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
    out = Path(__file__).resolve().parent / "results" / "base.json"
    write_json_atomic(out, {"config": config, "max_eval_examples": cfg.max_eval_examples,
                            "max_new_tokens": cfg.evaluation.max_new_tokens, "clients": scores})


if __name__ == "__main__":
    main(sys.argv[1])
