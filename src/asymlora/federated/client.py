"""One federated client in plain torch, whatever engine drives it.

A client owns a PEFT model of its own rank, its own data, and a node-local directory holding its
private state (A, M, B0, its own B for FedSA, FedDPA's local adapter and the representations of
its local sample, FLoRA's merged base deltas) as safetensors. Every change is written atomically before the client answers, so a client process
can die at any point and the next one (a restarted SuperNode, a fresh ClientApp process per
message, a resumed local run) carries on from the same state. Nothing in that directory is ever
sent: only `method.client_upload` leaves the client.

Two snapshots make a round idempotent: `applied` (the state after the last broadcast the client
took in) and `trained` (the result of local training in round t, started from `applied`). Asking a
client to train round t twice -- as a resumed server does -- restarts from `applied`, so a resumed
run reproduces an uninterrupted one.

Local training runs through the core of `asymlora train` (`local_training.local_train`), so a
client has that path's mixed precision, packing, chunked loss and schedule.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..data.records import Example, load_examples, split_file
from ..data.templates import get_template
from ..data.tokenize import tokenize_examples
from ..files import atomic_path
from .algorithms import merge_base_deltas
from .algorithms.base import AdapterSpec, FederatedMethod
from .algorithms.payloads import REPLACE, FromStart, Payload
from .config import FederatedConfig
from .keys import StateDict, describe_keys, parse_key
from .local_training import TrainStats, local_train


log = logging.getLogger("asymlora.federated")

_DELTA_PREFIX = "flora_base_delta::"


class ClientStateError(ValueError):
    """A client's state directory does not belong to this run, or is damaged."""


class StaleStateError(RuntimeError):
    """The server believes this client has taken in a later round than its state holds (its state
    directory was lost or replaced): the payload it sent assumes rounds the client does not have."""

    def __init__(self, client_id: int, applied_round: int, base_round: int) -> None:
        super().__init__(f"client {client_id} holds round {applied_round}, the server assumed round {base_round}")
        self.applied_round = int(applied_round)


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from several integers (run seed, client, round)."""
    s = 0x9E3779B97F4A7C15
    for p in parts:
        s = (s * 1_000_003 + int(p) + 0x632BE5AB) % (2**63)
    return s


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*parts))


SERVER = -1
"""The index `client_init: shared` seeds every client's initial adapter with, in place of its own."""


def init_seed(cfg: FederatedConfig, client_id: int) -> int:
    """The seed of client `client_id`'s initial adapter: the run's alone under `client_init: shared`
    (every client draws the same), the run's and the client's under `own`."""
    return mix_seed(cfg.seed, SERVER if cfg.client_init == "shared" else client_id, 0)


# ---- data ------------------------------------------------------------------------------------
def client_examples(client_id: int, *, data_dir: Optional[str] = None, train_file: Optional[str] = None,
                    test_file: Optional[str] = None, max_train: Optional[int] = None,
                    max_eval: Optional[int] = None) -> tuple[list[Example], list[Example]]:
    """(train, test) of one client: its `local_training_{i}.json`, and the test records of its own
    task(s) from `test.jsonl`. A node that holds only its own files names them directly."""
    root = Path(data_dir) if data_dir else None
    if train_file is None:
        if root is None:
            raise ValueError(f"client {client_id}: neither data_dir nor train_file is given")
        train_file = str(root / f"local_training_{client_id}.json")
    if test_file is None:
        if root is None:
            raise ValueError(f"client {client_id}: neither data_dir nor test_file is given")
        test_file = str(split_file(root, "test"))   # test.jsonl, test.json, global_test.json (Dolly's layout)...
    train = load_examples(train_file)
    if not train:
        raise ValueError(f"client {client_id}: {train_file} holds no records")
    if max_train is not None:
        train = train[:max_train]
    tasks = {ex.task for ex in train}
    test_all = load_examples(test_file)
    test: list[Example] = []
    per_task: dict[str, int] = {}
    for ex in test_all:
        if ex.task in tasks and (max_eval is None or per_task.get(ex.task, 0) < max_eval):
            per_task[ex.task] = per_task.get(ex.task, 0) + 1
            test.append(ex)
    if not test:
        raise ValueError(f"client {client_id}: {test_file} has no test records of its task(s) {sorted(tasks)}")
    return train, test


# ---- the client's model ----------------------------------------------------------------------
def adapter_spec(cfg: FederatedConfig, rank: int, seed: int) -> AdapterSpec:
    return AdapterSpec(rank=int(rank), alpha=cfg.alpha_of(rank), dropout=float(cfg.adapter.lora_dropout),
                       targets=tuple(cfg.adapter.target_modules), seed=int(seed), d_m=int(cfg.d_m))


def build_peft_model(base: torch.nn.Module, cfg: FederatedConfig, rank: int, seed: int) -> Any:
    """Wrap `base` (modified in place) in the adapter the run's method builds at `rank`, seeded."""
    import warnings

    import asymlora  # noqa: F401  (registers our layers with PEFT)

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return cfg.make_method(rank).build_model(base, adapter_spec(cfg, rank, seed))


def rank_prefix(reference: torch.Tensor, shape: Sequence[int], key: str = "tensor") -> torch.Tensor:
    """The leading part of `reference` of the given `shape` (the first r rows of A, the first r
    columns of M...). A cut along the last axis, a weight's fan-in, is scaled by sqrt(n_ref / n):
    every random adapter factor is uniform with bound 1/sqrt(fan-in), so the cut then has exactly
    the distribution a draw at its own size would have."""
    shape = tuple(int(n) for n in shape)
    if reference.dim() != len(shape):
        raise ValueError(f"{key!r}: the shared draw has shape {tuple(reference.shape)}, the client's factor {shape}")
    out = reference
    for axis, (n_ref, n) in enumerate(zip(reference.shape, shape)):
        if n > n_ref:
            raise ValueError(f"{key!r}: the client's factor {shape} is larger than the shared draw "
                             f"{tuple(reference.shape)} along axis {axis}")
        if n < n_ref:
            out = out.narrow(axis, 0, n)
            if axis == reference.dim() - 1:
                out = out * math.sqrt(n_ref / n)
    return out.detach().clone()


def initial_adapter_state(cfg: FederatedConfig, client_id: int, rank: int, model: torch.nn.Module,
                          base: BaseProvider) -> StateDict:
    """Client `client_id`'s adapter at round 0; `model` is its adapter as `build_peft_model` made it
    from `init_seed`, and `base` gives a fresh base model when a larger draw is needed.

    `own`: the model's own draw, seeded per client, so every client starts somewhere else.

    `shared` (the default): one draw from the run's seed alone, as if the server had built one
    adapter and broadcast it -- the set-up of FedIT, FedSA-LoRA, FedDPA and ZeroPadding, and of the
    authors' code, which copies one global model to every client. What it gives each method:
    - FedIT, FedDPA's global LoRA, FedSA-LoRA: the server averages A (and B) element-wise. From one
      start the first average is the start plus the mean update; from independent kaiming draws it
      shrinks A by about 1/sqrt(n) and pairs each client's B with the others' unrelated A. FedDPA's
      personal LoRA starts common too, as in the authors' code; it is never averaged.
    - Fed-ALoRA (one rank): each B_i is learnt against the client's own A_i; with a common A at the
      start the clients' B live in the same coordinates, so their average means something in round
      1. A then trains locally and drifts apart, as the method intends.
    - Different ranks: client i's factors are the leading part, along the rank axis, of one draw at
      the run's largest rank r_max (`rank_prefix`): ZeroPadding's rank-r_i A is the first r_i rows
      of one r_max x d_in A, so its padded average starts from common rows; the decomposition's A,
      M and B1 (FedSA-LoRA*: B, M, A1) are prefixes too, so the clients' projections M_i A_i into the
      d_m-space where the server averages share their first r_min components. A factor whose
      fan-in is the rank (M d_m x r; B and A1 on the A side) is scaled by sqrt(r_max / r_i) so that
      it has the spread a rank-r_i draw has: `shared` and `own` differ only in the draws being
      common, not in their size. FLoRA's stack is exact whatever the factors, so for FLoRA the
      choice moves only round 1's starting point.
    Only round 0 is affected: the factors a method re-draws later (FLoRA's fresh A, the
    decomposition's B1) are drawn per client and round, since those methods aggregate products,
    which are exact whatever the factors.
    """
    own = adapter_state(model)
    if cfg.client_init == "own":
        return own
    r_max = max(cfg.client_ranks)
    if rank > r_max:
        raise ValueError(f"client {client_id}: client_init shared cuts every client's adapter from one draw at "
                         f"the run's largest rank {r_max}, but this client has rank {rank}; list every "
                         "client's rank in `ranks`, or set client_init: own")
    if rank == r_max:
        return own  # built from the shared seed at r_max: it is the shared draw
    base_model, _ = base()
    reference = adapter_state(build_peft_model(base_model, cfg, r_max, init_seed(cfg, client_id)))
    del base_model
    missing, extra = set(own) - set(reference), set(reference) - set(own)
    if missing or extra:
        raise ValueError(f"client {client_id}: the rank-{r_max} draw has other factors than the rank-{rank} adapter"
                         + (f"; missing {describe_keys(missing)}" if missing else "")
                         + (f"; unexpected {describe_keys(extra)}" if extra else ""))
    return {k: rank_prefix(reference[k], own[k].shape, k).to(own[k].dtype) for k in own}


def adapter_state(model: torch.nn.Module) -> StateDict:
    """Every adapter factor of `model` (parameters and accumulator buffers), as detached CPU copies,
    keyed as the model's own state_dict spells them (adapter name included)."""
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items() if parse_key(k) is not None}


def _tensors_by_name(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    return named


def load_adapter_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the model's adapter tensors; the key sets must agree exactly."""
    named = _tensors_by_name(model)
    own = {k for k in named if parse_key(k) is not None}
    missing, extra = own - set(state), set(state) - own
    if missing or extra:
        raise ClientStateError("the adapter state does not fit the model"
                               + (f"; missing {describe_keys(missing)}" if missing else "")
                               + (f"; unexpected {describe_keys(extra)}" if extra else ""))
    with torch.no_grad():
        for key, value in state.items():
            target = named[key]
            if target.shape != value.shape:
                raise ClientStateError(f"{key!r}: the state has shape {tuple(value.shape)}, "
                                       f"the model {tuple(target.shape)}")
            target.copy_(value.to(device=target.device, dtype=target.dtype))


# ---- persistence -----------------------------------------------------------------------------
def atomic_save(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, Any]) -> None:
    """A safetensors file with `metadata` as JSON under the key "asymlora", whole or not at all."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={"asymlora": json.dumps(dict(metadata), sort_keys=True)})


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("asymlora", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ClientStateError(f"{path}: unreadable state file ({exc})") from exc
    return tensors, meta


@dataclass
class Snapshot:
    state: StateDict
    base_deltas: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def round(self) -> int:
        return int(self.meta["round"])


class ClientStore:
    """`applied.safetensors` and `trained.safetensors` in the client's own directory."""

    def __init__(self, root: Path, identity: Mapping[str, Any],
                 hint: Optional[Callable[[Any], str]] = None) -> None:
        self.root = Path(root)
        self.identity = dict(identity)
        self.hint = hint
        """Given the run fingerprint a refused file holds, what to change to resume it (or "")."""

    def _path(self, kind: str) -> Path:
        return self.root / f"{kind}.safetensors"

    def save(self, kind: str, snap: Snapshot) -> None:
        tensors = dict(snap.state)
        tensors.update({_DELTA_PREFIX + m: d for m, d in snap.base_deltas.items()})
        atomic_save(tensors, self._path(kind), {**snap.meta, "identity": self.identity})

    def load(self, kind: str) -> Optional[Snapshot]:
        path = self._path(kind)
        if not path.exists():
            return None
        tensors, meta = read_safetensors(path)
        if meta.get("identity") != self.identity:
            theirs = meta.get("identity")
            hint = ""
            if self.hint is not None and isinstance(theirs, dict) and \
                    {**theirs, "run": None} == {**self.identity, "run": None}:   # same client, another run
                hint = self.hint(theirs.get("run"))
            raise ClientStateError(
                f"{path} belongs to another run or client ({theirs}), not to {self.identity}; "
                f"point state_dir elsewhere or delete it{hint}")
        if "round" not in meta:
            raise ClientStateError(f"{path}: no round in its metadata")
        deltas = {k[len(_DELTA_PREFIX):]: v for k, v in tensors.items() if k.startswith(_DELTA_PREFIX)}
        state = {k: v for k, v in tensors.items() if not k.startswith(_DELTA_PREFIX)}
        meta.pop("identity", None)
        return Snapshot(state, deltas, meta)

    def remove(self, kind: str) -> None:
        self._path(kind).unlink(missing_ok=True)


# ---- the client ------------------------------------------------------------------------------
BaseProvider = Callable[[], tuple[torch.nn.Module, Any]]
"""Returns a fresh copy of the base model (the client may change its weights) and the tokenizer."""


class CachedBase:
    """Loads the base model once per process and hands out deep copies on the target device."""

    def __init__(self, model: str, device: str = "auto") -> None:
        self.name = model
        self.device = resolve_device(device)
        self._base: Optional[torch.nn.Module] = None
        self._tokenizer: Any = None

    def __call__(self) -> tuple[torch.nn.Module, Any]:
        if self._base is None:
            from ..models import load_model

            model, tok = load_model(self.name, dtype=torch.float32)
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._base, self._tokenizer = model, tok
        return copy.deepcopy(self._base), self._tokenizer


_PROCESS_BASES: dict[tuple[str, str], CachedBase] = {}


def process_base(model: str, device: str = "auto") -> CachedBase:
    """One cached base per process and model, shared by every client that process plays."""
    key = (model, device)
    if key not in _PROCESS_BASES:
        _PROCESS_BASES[key] = CachedBase(model, device)
    return _PROCESS_BASES[key]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass
class FitResult:
    upload: StateDict
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalOutcome:
    per_task: dict[str, float]
    num_examples: int
    records: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    """FedDPA with dynamic weighting: the local adapter's weight over the test instances
    (`feddpa_local_weight_mean`, `_min`, `_max`)."""

    @property
    def score(self) -> float:
        return sum(self.per_task.values()) / len(self.per_task)


class FederatedClient:
    """Client `client_id` of a run described by `cfg`; node-specific values override the config."""

    def __init__(self, cfg: FederatedConfig, client_id: int, *, rank: Optional[int] = None,
                 data_dir: Optional[str] = None, train_file: Optional[str] = None, test_file: Optional[str] = None,
                 state_dir: Optional[str] = None, base: Optional[BaseProvider] = None) -> None:
        self.cfg = cfg
        self.client_id = int(client_id)
        self.rank = int(rank) if rank is not None else cfg.rank_of(self.client_id)
        self.method: FederatedMethod = cfg.make_method(self.rank)
        self.data = dict(data_dir=data_dir or cfg.data_dir, train_file=train_file, test_file=test_file)
        root = Path(state_dir) if state_dir else cfg.client_state_root / f"client-{self.client_id}"
        self.store = ClientStore(root, {"run": cfg.fingerprint(), "client": self.client_id, "rank": self.rank},
                                 hint=cfg.resume_hint)
        self.base = base or process_base(cfg.model, cfg.device)
        self._model: Any = None
        self._tokenizer: Any = None
        self._merged: dict[str, torch.Tensor] = {}
        self._train: Optional[list[Example]] = None
        self._test: Optional[list[Example]] = None
        self._feddpa_references: Optional[torch.Tensor] = None
        self.last_train_stats: list[TrainStats] = []
        """The phases of the last round this client trained (loss curves in their log history)."""
        self._applied = self.store.load("applied")
        if self._applied is None:
            self._applied = self._initial_snapshot()
            if cfg.dp_settings is not None:   # DP's clients add the server's total to their initial factors
                self.store.save("initial", Snapshot(self._applied.state, {}, {"round": 0, "kind": "initial"}))
            self.store.save("applied", self._applied)
        self._trained = self.store.load("trained")

    # ---- state -------------------------------------------------------------------------
    @property
    def applied_round(self) -> int:
        return self._applied.round

    @property
    def state(self) -> StateDict:
        """The client's current (applied) adapter state; a copy, safe to inspect."""
        return dict(self._applied.state)

    @property
    def base_deltas(self) -> dict[str, torch.Tensor]:
        return dict(self._applied.base_deltas)

    def _initial_snapshot(self) -> Snapshot:
        model = self._ensure_model(fresh=True)
        state = initial_adapter_state(self.cfg, self.client_id, self.rank, model, self.base)
        load_adapter_state(model, state)
        return Snapshot(state, {}, {"round": 0, "kind": "applied"})

    def examples(self) -> tuple[list[Example], list[Example]]:
        if self._train is None:
            self._train, self._test = client_examples(
                self.client_id, max_train=self.cfg.max_train_examples, max_eval=self.cfg.max_eval_examples,
                **self.data)
        return self._train, self._test  # type: ignore[return-value]

    def num_examples(self) -> int:
        return len(self.examples()[0])

    # ---- model -------------------------------------------------------------------------
    def _ensure_model(self, fresh: bool = False) -> Any:
        if self._model is None:
            base, self._tokenizer = self.base()
            self._model = build_peft_model(base, self.cfg, self.rank, init_seed(self.cfg, self.client_id))
            self._model.to(resolve_device(self.cfg.device))
            self._model.eval()
            self._merged = {}
        if not fresh:
            self._sync(self._applied)
        return self._model

    def _sync(self, snap: Snapshot) -> None:
        """Make the live model hold `snap`: adapter tensors copied, base deltas merged once."""
        load_adapter_state(self._model, snap.state)
        todo = {}
        for module, delta in snap.base_deltas.items():
            done = self._merged.get(module)
            todo[module] = delta if done is None else delta - done
        if todo:
            merge_base_deltas(self._model, todo)
            self._merged = {m: d.clone() for m, d in snap.base_deltas.items()}

    def release(self) -> None:
        """Free the live model (the state stays on disk and in memory)."""
        self._model = None
        self._merged = {}

    # ---- protocol ----------------------------------------------------------------------
    def receive(self, payload: Mapping[str, torch.Tensor], payload_round: int, *, base_round: int = 0,
                trained_round: Optional[int] = None, accepted: Optional[bool] = None, reason: str = "") -> bool:
        """Take in the server's payload, which brings the client to round `payload_round` from round
        `base_round` (what the server believes the client holds). A payload already taken in is
        ignored. `accepted` says whether the server aggregated this client's update of `trained_round`
        (default: `payload_round`; None: it did not train since `base_round`): only an accepted
        update is built on; a rejected one is dropped and the client goes on from its last accepted
        state. Returns whether the state changed."""
        if self.applied_round < base_round:
            raise StaleStateError(self.client_id, self.applied_round, base_round)
        if payload_round <= self.applied_round:
            return False
        trained_round = payload_round if trained_round is None else trained_round
        trained = self._trained if self._trained is not None and self._trained.round == trained_round else None
        if trained is not None and accepted is False:
            log.warning("client %d: the server rejected its round %d update (%s); continuing from round %d's state",
                        self.client_id, trained_round, reason or "no reason given", self.applied_round)
            trained = None
        start = trained or self._applied
        state, deltas = self.payload().take(self.method, dict(start.state), dict(self._applied.base_deltas),
                                            payload, self.applied_round)
        self._applied = Snapshot(state, deltas, {"round": int(payload_round), "kind": "applied"})
        self.store.save("applied", self._applied)
        self.store.remove("trained")
        self._trained = None
        return True

    def payload(self) -> Payload:
        """How this client takes in a payload: the method's way, or under DP on a replaced factor its
        initial factors plus the server's running total (`dp`)."""
        if self.cfg.dp_settings is None or self.method.payload is not REPLACE:
            return self.method.payload
        initial = self.store.load("initial")
        if initial is None:
            raise ClientStateError(f"{self.store.root}: no initial.safetensors; DP needs the client's initial "
                                   "adapter (start the run afresh)")
        return FromStart(self.method.client_upload(initial.state))

    def fit(self, server_round: int) -> FitResult:
        """Local training for `server_round`, always from the applied state (so a repeated round
        gives the same result); the trained state is saved before the upload is returned."""
        model = self._ensure_model()
        train, _ = self.examples()
        seed = mix_seed(self.cfg.seed, self.client_id, server_round)
        state = self.method.round_start(self._applied.state, server_round, generator(seed, 0))
        load_adapter_state(model, state)
        training = self.cfg.training if self.cfg.progress else self.cfg.training.replace(progress=False)
        features, _ = tokenize_examples(train, self._tokenizer, get_template(training.template, self._tokenizer),
                                        cutoff_len=training.cutoff_len, train_on_prompt=training.train_on_prompt)
        trainable = [k for k in self.method.trainable_keys(state) if k in dict(model.named_parameters())]
        phases = self.method.training_phases(trainable)
        stats = [local_train(model, self._tokenizer, features, keys, training, seed=mix_seed(seed, 10 + i),
                             log_dir=self.store.root / "logs" / f"round-{server_round}-phase-{i}")
                 for i, keys in enumerate(phases)]
        self.last_train_stats = stats
        new_state = adapter_state(model)
        n = len(train)
        self._trained = Snapshot(new_state, self._applied.base_deltas,
                                 {"round": int(server_round), "kind": "trained", "num_examples": n})
        self.store.save("trained", self._trained)
        metrics = {"train_loss": sum(s.loss for s in stats) / len(stats), "steps": float(sum(s.steps for s in stats)),
                   "train_seconds": sum(s.seconds for s in stats)}
        upload = self.method.client_upload(new_state)
        if self.cfg.dp_settings is not None:   # DP clips and noises updates, not values (`dp`)
            before = self.method.client_upload(state)
            upload = {k: v - before[k] for k, v in upload.items()}
        attack = self.cfg.attack
        if attack is not None and self.client_id in attack.clients:  # a simulated Byzantine client
            upload = attack.corrupt(upload, generator(seed, 99))
        return FitResult(upload, n, metrics)

    def evaluate(self, predictions_path: Optional[Path] = None,
                 examples: Optional[Sequence[Example]] = None) -> EvalOutcome:
        """Generate on the client's own test set (or on `examples`, e.g. every task's, to measure
        transfer) with its personalised (applied) model, in eval mode."""
        from ..evaluate import evaluate_examples

        model = self._ensure_model()
        test = list(examples) if examples is not None else self.examples()[1]
        template = get_template(self.cfg.training.template, self._tokenizer)
        settings = self.cfg.evaluation

        def run() -> Any:
            return evaluate_examples(model, self._tokenizer, test, template=template,
                                     predictions_path=predictions_path, batch_size=settings.batch_size,
                                     max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
                                     progress=False)

        with self.method.evaluation_context(self) as context:
            result = run()
        summary = context.summary() if context is not None and hasattr(context, "summary") else {}
        metrics = {f"{self.method.name}_local_weight_{k}": v for k, v in summary.items() if k != "count"}
        return EvalOutcome(dict(result.per_task), len(test), result.records, metrics)

    def live_model(self) -> Any:
        """The client's model holding its applied state (built on first use)."""
        return self._ensure_model()

    @property
    def tokenizer(self) -> Any:
        self._ensure_model()
        return self._tokenizer
