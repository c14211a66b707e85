"""The ServerApp and the ClientApp. Both read the run from Flower's run config (every key of the
YAML config, see `FederatedConfig.to_run_config`); a node's own settings come from its node config
and override the run's:

    partition-id   which client this node plays (simulation sets it; `flower-supernode
                   --node-config "partition-id=3"` in a deployment)
    rank           the client's LoRA rank (default: the run's `ranks`)
    data-dir       a FLAN-layout folder, or train-file / test-file for the node's own files
    state-dir      where the client's private state lives (default: <state_dir>/client-<i>)

`build_server_app(defaults)` / `build_client_app(defaults)` bind a config for the Python simulation
API, whose run config is empty; `server_app` and `client_app` are the objects a Flower App names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..client import FederatedClient, StaleStateError, process_base
from ..config import FederatedConfig
from .records import (
    ACCEPTED, APPLIED_ROUND, ARRAYS, BASE_ROUND, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID, PAYLOAD_ROUND, RANK,
    REASON, SCORE, SERVER_ROUND, STALE, TASK_SCORE, TRAINED_ROUND, WRITE_PREDICTIONS, from_record, to_record,
)
from .strategy import make_strategy

log = logging.getLogger("asymlora.federated")


def run_config_of(defaults: Optional[Mapping[str, Any]], context: Context) -> FederatedConfig:
    merged = dict(defaults or {})
    merged.update(dict(context.run_config))
    return FederatedConfig.from_run_config(merged)


# ---- server --------------------------------------------------------------------------------------
def build_server_app(defaults: Optional[Mapping[str, Any]] = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = run_config_of(defaults, context)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "server.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("asymlora")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            make_strategy(cfg).start(grid, num_rounds=cfg.rounds)
        finally:
            logger.removeHandler(handler)
            handler.close()

    return app


# ---- client --------------------------------------------------------------------------------------
ClientFactory = Callable[..., FederatedClient]
"""Builds the client a node plays (`FederatedClient`'s signature); tests pass faulty subclasses."""


def client_of(defaults: Optional[Mapping[str, Any]], context: Context,
              factory: ClientFactory = FederatedClient) -> FederatedClient:
    cfg = run_config_of(defaults, context)
    node = dict(context.node_config)
    if PARTITION_ID not in node:
        raise KeyError(f"the node config has no {PARTITION_ID!r}: start the SuperNode with "
                       f"--node-config \"partition-id=<0..{cfg.n_clients - 1}>\"")
    pid = int(node[PARTITION_ID])
    rank = node.get("rank")
    text = lambda k: str(node[k]) if node.get(k) not in (None, "") else None  # noqa: E731
    return factory(cfg, pid, rank=int(rank) if rank not in (None, "") else None,
                   data_dir=text("data-dir"), train_file=text("train-file"), test_file=text("test-file"),
                   state_dir=text("state-dir"), base=process_base(cfg.model, cfg.device))


def _take_payload(client: FederatedClient, msg: Message) -> int:
    """Take in the message's payload (raises `StaleStateError`); the round the message is for."""
    config = msg.content[CONFIG]
    payload = from_record(msg.content[ARRAYS]) if ARRAYS in msg.content.array_records else {}
    accepted = int(config.get(ACCEPTED, -1))
    client.receive(payload, int(config[PAYLOAD_ROUND]), base_round=int(config.get(BASE_ROUND, 0)),
                   trained_round=int(config.get(TRAINED_ROUND, 0)), accepted=None if accepted < 0 else bool(accepted),
                   reason=str(config.get(REASON, "")))
    return int(config[SERVER_ROUND])


def _stale(client: FederatedClient, msg: Message, exc: StaleStateError) -> Message:
    log.warning("%s: asking the server to resend from round %d", exc, exc.applied_round)
    metrics = MetricRecord({PARTITION_ID: client.client_id, APPLIED_ROUND: exc.applied_round, STALE: 1})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)


def build_client_app(defaults: Optional[Mapping[str, Any]] = None, mods: Optional[list] = None,
                     factory: ClientFactory = FederatedClient) -> ClientApp:
    from .dp import client_dp_mod
    from .secagg import secagg_client_mod

    app = ClientApp(mods=[*(mods or []), secagg_client_mod, client_dp_mod])

    @app.query()
    def register(msg: Message, context: Context) -> Message:
        client = client_of(defaults, context, factory)
        metrics = MetricRecord({PARTITION_ID: client.client_id, RANK: client.rank,
                                NUM_EXAMPLES: client.num_examples(), APPLIED_ROUND: client.applied_round})
        client.release()
        return Message(RecordDict({METRICS: metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = client_of(defaults, context, factory)
        try:
            server_round = _take_payload(client, msg)
            fit = client.fit(server_round)
        except StaleStateError as exc:
            return _stale(client, msg, exc)
        finally:
            client.release()
        metrics = MetricRecord({PARTITION_ID: client.client_id, RANK: client.rank, NUM_EXAMPLES: fit.num_examples,
                                APPLIED_ROUND: client.applied_round, **{k: float(v) for k, v in fit.metrics.items()}})
        return Message(RecordDict({ARRAYS: to_record(fit.upload), METRICS: metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        client = client_of(defaults, context, factory)
        try:
            server_round = _take_payload(client, msg)
            preds = None
            if bool(msg.content[CONFIG].get(WRITE_PREDICTIONS, False)):
                preds = client.store.root / f"predictions-round{server_round}.jsonl"
            res = client.evaluate(preds)
        except StaleStateError as exc:
            return _stale(client, msg, exc)
        finally:
            client.release()
        metrics = MetricRecord({PARTITION_ID: client.client_id, NUM_EXAMPLES: res.num_examples,
                                APPLIED_ROUND: client.applied_round, SCORE: res.score,
                                **{TASK_SCORE + t: float(s) for t, s in res.per_task.items()},
                                **{k: float(v) for k, v in res.metrics.items()}})
        return Message(RecordDict({METRICS: metrics}), reply_to=msg)

    return app


server_app = build_server_app()
client_app = build_client_app()
