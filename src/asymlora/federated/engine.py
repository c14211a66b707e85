"""The in-process engine: the same clients and the same server code as under Flower, driven one
client after another in one process (a single GPU, no Ray).

Each round: sample clients (seeded), let each catch up on the broadcast it missed and train, drop
the ones that crash or answer later than `client_timeout`, validate and aggregate the rest
(`session.close_round`), give every client the round's broadcast and score it on its own task,
then checkpoint the server and rewrite the results. A run killed at any point resumes from the
last completed round and, training being seeded, reproduces the uninterrupted run.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .client import FederatedClient
from .config import FederatedConfig
from .results import write_results
from .session import CHECKPOINT, ServerState, close_round, sample_clients
from .validation import ClientUpdate, Rejection

log = logging.getLogger("asymlora.federated")

ClientFactory = Callable[[FederatedConfig, int], FederatedClient]


class LocalEngine:
    """Runs `cfg` in this process. `client_factory` builds client i (tests inject faulty ones)."""

    def __init__(self, cfg: FederatedConfig, *, client_factory: Optional[ClientFactory] = None,
                 fresh: bool = False, on_round_end: Optional[Callable[[int, ServerState], None]] = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.server_dir = self.out / "server"
        if fresh:
            shutil.rmtree(self.server_dir, ignore_errors=True)
            shutil.rmtree(cfg.client_state_root, ignore_errors=True)
        self.factory = client_factory or (lambda c, i: FederatedClient(c, i))
        self.on_round_end = on_round_end
        self._model_config: Optional[dict[str, Any]] = None

    def _load_state(self) -> ServerState:
        state = ServerState.load(self.server_dir, self.cfg)
        if state is None:
            if self.cfg.client_state_root.exists() and any(self.cfg.client_state_root.iterdir()):
                log.warning("no server checkpoint in %s but client state in %s: the clients continue from it",
                            self.server_dir, self.cfg.client_state_root)
            return ServerState(self.cfg)
        log.info("resuming from %s: round %d of %d done", self.server_dir / CHECKPOINT, state.round, self.cfg.rounds)
        return state

    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        state = self._load_state()
        clients = {i: self.factory(cfg, i) for i in range(cfg.n_clients)}
        for c in clients.values():
            c.release()
        template = clients[0]
        expected = template.method.upload_pattern(template.method.client_upload(template.state))
        rounds = range(state.round + 1, cfg.rounds + 1)
        bar = tqdm(rounds, desc=f"{cfg.method} rounds", disable=not cfg.progress, initial=state.round,
                   total=cfg.rounds)
        summary: Optional[dict[str, Any]] = None
        for t in bar:
            start = time.perf_counter()
            participants = sample_clients(list(clients), cfg.fraction, cfg.min_clients, cfg.seed, t)
            updates, failures, train = [], [], {}
            for cid in participants:
                client = clients[cid]
                try:
                    payload, pr = state.payload_for(cid)
                    client.receive(payload, pr, state.mode)
                    state.mark_applied(cid, pr)
                    t0 = time.perf_counter()
                    fit = client.fit(t)
                    took = time.perf_counter() - t0
                except Exception as exc:  # a crashed client costs the round its update, nothing more
                    log.exception("round %d: client %d crashed", t, cid)
                    failures.append(Rejection(str(cid), f"crashed: {type(exc).__name__}: {exc}"))
                    continue
                finally:
                    client.release()
                if cfg.client_timeout is not None and took > cfg.client_timeout:
                    failures.append(Rejection(str(cid), f"timed out: replied after {took:.1f}s, "
                                                        f"client_timeout is {cfg.client_timeout:g}s"))
                    continue
                train[cid] = {**fit.metrics, "num_examples": fit.num_examples}
                updates.append(ClientUpdate(str(cid), fit.upload, fit.num_examples))
            record = close_round(state, t, participants, updates, failures, train, expected, log)
            if t % cfg.eval_every == 0 or t == cfg.rounds:
                record["eval"] = self._evaluate(state, clients, t)
            record["seconds"] = time.perf_counter() - start
            state.round = t
            state.history.append(record)
            state.save(self.server_dir)
            summary = self._write(state)
            ev = record["eval"]
            if ev:
                bar.set_postfix(avg=f"{sum(e['score'] for e in ev.values()) / len(ev):.2f}")
            if self.on_round_end is not None:
                self.on_round_end(t, state)
        bar.close()
        return summary if summary is not None else self._write(state)

    def _evaluate(self, state: ServerState, clients: dict[int, FederatedClient], t: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        last = t == self.cfg.rounds
        for cid, client in clients.items():
            try:
                payload, pr = state.payload_for(cid)
                client.receive(payload, pr, state.mode)
                state.mark_applied(cid, pr)
                preds = self.out / "predictions" / f"client-{cid}.jsonl" if last else None
                res = client.evaluate(preds)
            except Exception:
                log.exception("round %d: client %d failed to evaluate", t, cid)
                continue
            finally:
                client.release()
            out[str(cid)] = {"score": res.score, "per_task": res.per_task, "num_examples": res.num_examples,
                             **res.metrics}
        return out

    def _write(self, state: ServerState) -> dict[str, Any]:
        if self._model_config is None:
            from .results import model_config_dict

            self._model_config = model_config_dict(self.cfg)
        return write_results(self.cfg, state.history, self.out, self._model_config)


def run_local(cfg: FederatedConfig, **kwargs: Any) -> dict[str, Any]:
    return LocalEngine(cfg, **kwargs).run()
