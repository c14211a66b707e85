"""Secure aggregation with Flower's SecAgg+ (`SecAggPlusWorkflow` on the server, `secaggplus_mod` on
the clients): the server learns only the example-weighted mean of the round's uploads, never one
client's. Flower runs SecAgg+ inside its legacy fit loop; here its four stages (setup, share keys,
collect masked vectors, unmask) are driven for one round of our loop, with our train message (the
payload the client lacks) as the content of the masked-vector stage and the upload handed to the mod
in the legacy FitRes form it masks. Clients that drop out after sharing keys are tolerated up to the
reconstruction threshold. Values are clipped to +-`clipping_range` and quantised (`quantization_range`
levels): the sum is exact to that quantisation."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from .records import ARRAYS, METRICS, NUM_EXAMPLES

log = logging.getLogger("asymlora.federated")


# ---- client ----------------------------------------------------------------------------------------
def secagg_client_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """Hands SecAgg+ messages to Flower's `secaggplus_mod`, our train reply converted to the FitRes it
    masks (the upload's arrays in key order, the example count as its weight); others pass through."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctx)
    from flwr.client.mod import secaggplus_mod

    def legacy(m: Message, c: Context) -> Message:
        reply = call_next(m, c)
        if reply.has_error() or ARRAYS not in reply.content.array_records:
            raise RuntimeError(reply.error.reason if reply.has_error() else "the client sent no upload")
        record = reply.content[ARRAYS]
        keys = sorted(record.keys())
        metrics = reply.content[METRICS]
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([record[k].numpy() for k in keys]),
                        int(metrics[NUM_EXAMPLES]), {k: v for k, v in metrics.items()})
        content = fitres_to_recorddict(fitres, keep_input=False)
        content[METRICS] = metrics
        return Message(content, reply_to=m)

    return secaggplus_mod(msg, ctx, legacy)


# ---- server ----------------------------------------------------------------------------------------
class _Capture:
    """The legacy strategy the workflow hands its result to: keeps the unmasked mean and the FitRes."""

    def __init__(self, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)
        self.mean: Optional[list[np.ndarray]] = None
        self.results: list[tuple[Any, FitRes]] = []
        self.failures: list[Any] = []

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return [(SimpleNamespace(node_id=n, cid=str(n)), FitIns(Parameters([], "numpy.ndarray"), {}))
                for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Optional[Parameters], dict]:
        self.results, self.failures = list(results), list(failures)
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)   # every FitRes holds the mean
        return None, {}


def secure_round(grid: Any, server_round: int, messages: dict[int, Message], *, max_weight: float,
                 clipping_range: float, quantization_range: int, timeout: Optional[float],
                 reconstruction_threshold: float = 0.6,
                 on_stage: Optional[Callable[[str], None]] = None) -> _Capture:
    """Run SecAgg+'s stages over the nodes of `messages` (node -> our train message); the capture
    holds the weighted mean (arrays in sorted key order) and each surviving node's FitRes."""
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=reconstruction_threshold,
                                  max_weight=max_weight, clipping_range=clipping_range,
                                  quantization_range=quantization_range, timeout=timeout)
    capture = _Capture(list(messages))
    context = SimpleNamespace(
        state=RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: int(server_round)}),
                          MAIN_PARAMS_RECORD: ArrayRecord()}),
        strategy=capture, client_manager=SimpleNamespace(num_available=lambda: len(messages)),
        history=SimpleNamespace(add_metrics_distributed_fit=lambda **_: None))
    state = WorkflowState()
    stages = [("setup", workflow.setup_stage), ("share keys", workflow.share_keys_stage),
              ("collect masked vectors", workflow.collect_masked_vectors_stage), ("unmask", workflow.unmask_stage)]
    for name, stage in stages:
        if name == "collect masked vectors":   # our train message is what each client trains on
            for nid in list(state.nid_to_fitins):
                state.nid_to_fitins[nid] = messages[nid].content
        if not stage(grid, context, state):
            raise SecAggError(f"SecAgg+ stopped at the {name} stage: {len(state.active_node_ids)} clients left, "
                              f"threshold {state.threshold}")
        if on_stage is not None:
            on_stage(name)
    return capture


class SecAggError(RuntimeError):
    """SecAgg+ could not finish the round (too many clients dropped out)."""


def metric_record(fitres: FitRes) -> MetricRecord:
    return MetricRecord({k: v for k, v in fitres.metrics.items() if isinstance(v, (int, float))})
