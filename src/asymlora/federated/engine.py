"""The in-process engine: the round loop of `flower.strategy` and the ClientApp of `flower.apps`,
connected by an in-process Grid instead of Ray or a SuperLink -- one GPU or a laptop, clients one
after another. It is the same code as the simulation and a deployment, message for message; only
the transport differs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from .client import FederatedClient
from .config import FederatedConfig

log = logging.getLogger("asymlora.federated")

ClientFactory = Callable[..., FederatedClient]


class LocalEngine:
    """Runs `cfg` in this process. `client_factory` builds the client a node plays (tests inject
    faulty ones); `on_phase(phase, round)` is called at each point of a round (`strategy.PHASES`)."""

    def __init__(self, cfg: FederatedConfig, *, client_factory: Optional[ClientFactory] = None,
                 fresh: bool = False, on_phase: Optional[Callable[[str, int], None]] = None,
                 mods: Optional[list] = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        if fresh:
            shutil.rmtree(self.out / "server", ignore_errors=True)
            shutil.rmtree(cfg.client_state_root, ignore_errors=True)
        self.factory = client_factory or FederatedClient
        self.on_phase = on_phase
        self.mods = mods

    def grid(self) -> Any:
        from .flower.apps import build_client_app
        from .flower.inprocess import InProcessGrid

        app = build_client_app(mods=self.mods, factory=self.factory)
        nodes = [{"partition-id": i} for i in range(self.cfg.n_clients)]
        return InProcessGrid(app, nodes, run_config=self.cfg.to_run_config(), client_timeout=self.cfg.client_timeout)

    def run(self) -> dict[str, Any]:
        from .flower.strategy import FederatedStrategy

        self.cfg.check_data()  # every client reads data_dir here: a missing file is named before a model loads
        strategy = FederatedStrategy(self.cfg, on_phase=self.on_phase)
        if strategy.state.evaluated == 0 and self.cfg.client_state_root.exists() \
                and any(self.cfg.client_state_root.iterdir()):
            log.warning("no server checkpoint in %s but client state in %s: the clients continue from it",
                        strategy.server_dir, self.cfg.client_state_root)
        strategy.start(self.grid(), num_rounds=self.cfg.rounds)
        return strategy.write_results()


def run_local(cfg: FederatedConfig, **kwargs: Any) -> dict[str, Any]:
    return LocalEngine(cfg, **kwargs).run()
