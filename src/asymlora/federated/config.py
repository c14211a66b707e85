"""The configuration of a federated run: one YAML file, read strictly (an unknown or mistyped key is
an error, never silently ignored), and the same values flattened into Flower's run config, so the
in-process engine, the simulation and a real deployment all read one description of the run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..files import read_settings
from ..train.config import TrainConfig
from .algorithms import METHOD_NAMES, build_method
from .algorithms.base import FederatedMethod
from .aggregation import AggregationError, AggregationRule
from .algorithms.decomposed import UPLOADS
from .algorithms.feddpa import DEFAULT_SIMILARITY_SCALE, WEIGHTINGS
from .byzantine import Attack
from .dp import DPSettings
from .identity import key_map


class ConfigError(ValueError):
    """A federated config is unusable; the message names the file and the key."""


CLIENT_INITS: tuple[str, ...] = ("shared", "own")
"""How clients draw their initial adapters (`client.initial_adapter_state`): all from the run's seed,
as if the server had broadcast one, or each from its own seed (the only behaviour before the key
existed)."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class FederatedConfig:
    """Everything a federated run needs. Keys match the YAML file (see configs/federated/)."""

    model: str = field(metadata=_help("base model: a local directory, a hub name, or smollm2-135m"))
    data_dir: str = field(metadata=_help("FLAN layout: local_training_{i}.json per client and test.jsonl"))
    method: str = field(metadata=_help(f"one of {', '.join(METHOD_NAMES)}"))
    output_dir: str = field(metadata=_help("results, server checkpoints, plots"))
    ranks: list[int] = field(default_factory=lambda: [8],
                             metadata=_help("one rank per client, or one rank for every client"))
    num_clients: Optional[int] = field(default=None, metadata=_help("clients, when `ranks` has one value"))
    heterogeneous: Optional[bool] = field(
        default=None, metadata=_help("fedalora/fedsa: use the decomposed layer; default: when ranks differ"))
    d_m: int = field(default=16, metadata=_help("intermediate width of the decomposition"))
    upload: str = field(
        default="factors", metadata=_help("the decomposition's upload: factors (B1, B2 as in the paper), product "
                                          "(B2 B1, d_out x d_m), auto (whichever is smaller for each client's rank)"))
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata=_help("adapted modules"))
    lora_alpha: Optional[float] = field(default=None, metadata=_help("default 2 x rank"))
    lora_dropout: float = field(default=0.05, metadata=_help("dropout on the adapter input"))
    rounds: int = field(default=10, metadata=_help("communication rounds"))
    local_epochs: float = field(default=1.0, metadata=_help("local epochs per round"))
    max_local_steps: Optional[int] = field(default=None, metadata=_help("cap on optimiser steps per round"))
    batch_size: int = field(default=8, metadata=_help("local batch size"))
    grad_accum: int = field(default=1, metadata=_help("gradient accumulation steps"))
    lr: float = field(default=5e-4, metadata=_help("AdamW learning rate"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    cutoff_len: int = field(default=256, metadata=_help("tokens per training example"))
    template: str = field(default="alpaca_short", metadata=_help("prompt template name or JSON path"))
    fraction: float = field(default=1.0, metadata=_help("fraction of clients sampled per round"))
    min_clients: int = field(default=1, metadata=_help("valid updates needed to aggregate a round"))
    client_timeout: Optional[float] = field(default=None, metadata=_help("seconds; a later reply is dropped"))
    seed: int = field(default=0, metadata=_help("initialisation, sampling and data order"))
    client_init: str = field(
        default="shared", metadata=_help("shared: every client starts from one initial adapter (drawn from the seed, "
                                         "as if the server had broadcast it; a smaller rank takes a prefix of the "
                                         "largest rank's draw); own: each client draws its own"))
    max_train_examples: Optional[int] = field(default=None, metadata=_help("per client, first N"))
    max_eval_examples: Optional[int] = field(default=None, metadata=_help("per client and task, first N"))
    eval_every: int = field(default=1, metadata=_help("evaluate every N rounds (the last always)"))
    max_new_tokens: int = field(default=32, metadata=_help("generation length at evaluation"))
    eval_batch_size: int = field(default=8, metadata=_help("generation batch size"))
    feddpa_weighting: str = field(
        default="dynamic", metadata=_help("FedDPA at evaluation: dynamic (each test instance weights the global and "
                                          "local adapters by its similarity to the client's data) or fixed (1 and 1)"))
    feddpa_reference_size: int = field(
        default=16, metadata=_help("FedDPA: local training prompts whose representations are stored per client"))
    feddpa_similarity_scale: float = field(
        default=DEFAULT_SIMILARITY_SCALE, metadata=_help("FedDPA: local weight = this x mean cosine similarity"))
    state_dir: Optional[str] = field(default=None, metadata=_help("clients' private state; default output_dir/clients"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:0, ..."))
    progress: bool = field(default=True, metadata=_help("tqdm progress bars"))
    aggregation: str = field(default="fedavg", metadata=_help(
        "how the server combines uploads: fedavg | median | trimmed_mean | krum | multikrum | bulyan "
        "(Flower's functions; not for FLoRA, ZeroPadding or uploaded factors)"))
    trim_fraction: float = field(default=0.2, metadata=_help("trimmed_mean: fraction cut at each end, in [0, 0.5)"))
    byzantine_clients: int = field(default=0, metadata=_help("krum, multikrum, bulyan: Byzantine clients assumed"))
    multikrum_keep: Optional[int] = field(default=None, metadata=_help("multikrum: uploads averaged (default n - f)"))
    byzantine: Optional[dict] = field(default=None, metadata=_help(
        "simulated attacker, for evaluation: {clients: [ids], kind: scale|sign_flip|gaussian|nan, factor: x}; "
        "the named clients send corrupted uploads, their own training is untouched"))
    dp: Optional[dict] = field(default=None, metadata=_help(
        "differential privacy on the uploaded updates: {mode: central|local, clipping: server|client|adaptive, "
        "clip_norm, noise_multiplier, delta, target_quantile, clip_learning_rate, clipped_count_stddev}"))
    secagg: Optional[Union[bool, dict]] = field(default=None, metadata=_help(
        "secure aggregation (Flower's SecAgg+): true, or {clipping_range: 8.0, quantization_range: 4194304, "
        "reconstruction_threshold: 0.6, max_weight: 1000}; the server sees only the weighted mean"))
    node_keys: Optional[dict] = field(default=None, metadata=_help(
        "Flower SuperNode authentication: {client id: public key file of the node allowed to play it}; a node "
        "claiming another client is refused"))
    round_timeout: float = field(default=3600.0, metadata=_help("Flower: seconds to wait for replies"))
    connect_timeout: float = field(default=600.0, metadata=_help("Flower: seconds to wait for all nodes"))

    def __post_init__(self) -> None:
        if isinstance(self.ranks, int):
            self.ranks = [self.ranks]
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        self.validate()

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ConfigError(f"method: unknown federated method {self.method!r}; known: {', '.join(METHOD_NAMES)}")
        if not isinstance(self.ranks, list) or not self.ranks or any(
                isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in self.ranks):
            raise ConfigError(f"ranks: expected a positive integer or a list of them, got {self.ranks!r}")
        if self.num_clients is not None:
            _positive_int(self.num_clients, "num_clients")
            if len(self.ranks) not in (1, self.num_clients):
                raise ConfigError(f"ranks: {len(self.ranks)} ranks given for num_clients {self.num_clients}")
        for name in ("d_m", "rounds", "batch_size", "grad_accum", "cutoff_len", "min_clients", "eval_every",
                     "max_new_tokens", "eval_batch_size", "feddpa_reference_size"):
            _positive_int(getattr(self, name), name)
        for name in ("max_local_steps", "max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)
        if not (0.0 < float(self.fraction) <= 1.0):
            raise ConfigError(f"fraction: must be in (0, 1], got {self.fraction!r}")
        if float(self.local_epochs) <= 0:
            raise ConfigError(f"local_epochs: must be > 0, got {self.local_epochs!r}")
        if float(self.lr) <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ConfigError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout!r}")
        if self.client_timeout is not None and float(self.client_timeout) <= 0:
            raise ConfigError(f"client_timeout: must be > 0 seconds, got {self.client_timeout!r}")
        if self.client_init not in CLIENT_INITS:
            raise ConfigError(f"client_init: expected one of {', '.join(CLIENT_INITS)}, got {self.client_init!r}")
        if self.upload not in UPLOADS:
            raise ConfigError(f"upload: expected one of {', '.join(UPLOADS)}, got {self.upload!r}")
        if self.upload != "factors" and not self.uses_decomposition:
            raise ConfigError(f"upload: {self.upload} applies to the decomposition only (fedalora or fedsa with "
                              "different ranks, or heterogeneous: true); this run sends its factors")
        if self.feddpa_weighting not in WEIGHTINGS:
            raise ConfigError(f"feddpa_weighting: expected one of {', '.join(WEIGHTINGS)}, got {self.feddpa_weighting!r}")
        if not 0.0 <= float(self.feddpa_similarity_scale) <= 1.0:
            raise ConfigError(f"feddpa_similarity_scale: must be in [0, 1], got {self.feddpa_similarity_scale!r}")
        if not self.targets:
            raise ConfigError("targets: no modules to adapt")
        if self.min_clients > self.n_clients:
            raise ConfigError(f"min_clients {self.min_clients} exceeds the {self.n_clients} clients of the run")
        try:
            method = self.make_method()
        except ValueError as exc:
            raise ConfigError(f"method: {exc}") from None
        self._check_protections(method)

    def _check_protections(self, method: FederatedMethod) -> None:
        rule = self.aggregation_rule
        try:
            rule.check()
            if rule.name != "fedavg":
                reason = method.combinable()
                if reason:
                    raise AggregationError(f"aggregation {rule.name} cannot apply to {self.method}: {reason}")
                rule.check_count(self.sampled_clients)
        except AggregationError as exc:
            raise ConfigError(f"aggregation: {exc}" if not str(exc).startswith("aggregation") else str(exc)) from None
        try:
            self.attack
            settings = self.dp_settings
            self.node_key_map
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        secagg = self.secagg_settings
        if secagg is not None:
            reason = method.combinable()
            if reason:
                raise ConfigError(f"secagg: the server can only get the sum of same-shape uploads; {self.method}: "
                                  f"{reason}")
            if rule.name != "fedavg":
                raise ConfigError(f"secagg: the server sees only the sum, so aggregation {rule.name} (which needs each "
                                  "upload) cannot apply")
            if settings is not None and settings.mode != "local":
                raise ConfigError("secagg: with central DP the server would have to clip or noise each update it "
                                  "never sees; use dp.mode: local")
            if self.sampled_clients < 3:
                raise ConfigError(f"secagg: SecAgg+ needs at least 3 sampled clients, this run samples "
                                  f"{self.sampled_clients}")
        if settings is not None:
            reason = method.combinable()
            if reason:
                raise ConfigError(f"dp: cannot protect {self.method}'s uploads: {reason}")
            if rule.name != "fedavg":
                raise ConfigError(f"dp: the noise is calibrated to the mean of clipped updates; it cannot be combined "
                                  f"with aggregation {rule.name}")
            count_std = settings.clipped_count_stddev or self.sampled_clients / 20
            if settings.clipping == "adaptive" and settings.noise_multiplier > 0 \
                    and settings.noise_multiplier >= 2 * count_std:
                raise ConfigError(f"dp: adaptive clipping spends part of the noise on the count of clipped updates; "
                                  f"noise_multiplier {settings.noise_multiplier:g} needs dp.clipped_count_stddev > "
                                  f"{settings.noise_multiplier / 2:g} (default: sampled clients / 20 = "
                                  f"{self.sampled_clients / 20:g})")
            if method.payload.name == "replace" and self.client_init != "shared":
                raise ConfigError("dp: clients send updates from one common start; set client_init: shared")

    @property
    def secagg_settings(self) -> Optional[dict[str, Any]]:
        """SecAgg+'s parameters, defaults filled in; None when off."""
        if self.secagg in (None, False, {}, ""):
            return None
        given = {} if self.secagg is True else self.secagg
        if not isinstance(given, Mapping):
            raise ConfigError(f"secagg: expected true or a mapping, got {self.secagg!r}")
        out = dict(SECAGG_DEFAULTS)
        unknown = sorted(set(given) - set(out))
        if unknown:
            raise ConfigError(f"secagg: unknown key(s) {unknown}; known: {', '.join(sorted(out))}")
        out.update(given)
        for k, v in out.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"):
                raise ConfigError(f"secagg.{k}: expected a positive finite number, got {v!r}")
        if not out["reconstruction_threshold"] <= 1:
            raise ConfigError(f"secagg.reconstruction_threshold: a fraction of the shares in (0, 1], "
                              f"got {out['reconstruction_threshold']!r}")
        out["quantization_range"] = int(out["quantization_range"])
        return out

    @property
    def node_key_map(self) -> dict[bytes, int]:
        """public key (DER) -> the client its node may play (empty: no check)."""
        return key_map(self.node_keys, self.n_clients)

    @property
    def dp_settings(self) -> Optional[DPSettings]:
        return DPSettings.from_setting(self.dp)

    @property
    def aggregation_rule(self) -> AggregationRule:
        return AggregationRule(self.aggregation, float(self.trim_fraction), self.byzantine_clients, self.multikrum_keep)

    @property
    def attack(self) -> Optional[Attack]:
        return Attack.from_setting(self.byzantine, self.n_clients)

    @property
    def sampled_clients(self) -> int:
        """Clients sampled per round (`session.sample_clients`)."""
        import math

        return min(self.n_clients, max(self.min_clients, math.ceil(self.fraction * self.n_clients - 1e-9), 1))

    # ---- derived -------------------------------------------------------------------------
    @property
    def n_clients(self) -> int:
        return self.num_clients if self.num_clients is not None else len(self.ranks)

    def rank_of(self, client: int) -> int:
        if not 0 <= client < self.n_clients:
            raise ConfigError(f"client {client} does not exist; the run has clients 0..{self.n_clients - 1}")
        return self.ranks[0] if len(self.ranks) == 1 else self.ranks[client]

    @property
    def client_ranks(self) -> list[int]:
        return [self.rank_of(i) for i in range(self.n_clients)]

    @property
    def is_heterogeneous(self) -> bool:
        """Whether fedalora/fedsa use the decomposed layer (zeropadding and flora handle any ranks)."""
        if self.heterogeneous is not None:
            return bool(self.heterogeneous)
        return len(set(self.client_ranks)) > 1

    @property
    def training(self) -> TrainConfig:
        """The settings of a client's local training, as a training config spells them."""
        return TrainConfig(
            learning_rate=float(self.lr), num_epochs=float(self.local_epochs),
            max_steps=self.max_local_steps if self.max_local_steps is not None else -1,
            batch_size=self.batch_size, grad_accum=self.grad_accum, cutoff_len=self.cutoff_len,
            weight_decay=float(self.weight_decay), lr_scheduler="constant", template=self.template,
            seed=self.seed, progress=self.progress, logging_steps=1)

    def alpha_of(self, rank: int) -> float:
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * rank

    def make_method(self, rank: Optional[int] = None) -> FederatedMethod:
        """The algorithm object; FLoRA folds the client's alpha/r into the B it uploads."""
        opts: dict[str, Any] = {}
        if self.method == "flora" and rank is not None:
            opts["scaling"] = self.alpha_of(rank) / rank
        if self.method == "feddpa":
            opts.update(weighting=self.feddpa_weighting, similarity_scale=self.feddpa_similarity_scale,
                        reference_size=self.feddpa_reference_size)
        if self.uses_decomposition:
            opts.update(upload=self.upload, rank=rank)
        return build_method(self.method, heterogeneous=self.is_heterogeneous, **opts)

    @property
    def uses_decomposition(self) -> bool:
        return self.method in ("fedalora", "fedsa") and self.is_heterogeneous

    @property
    def client_state_root(self) -> Path:
        return Path(self.state_dir) if self.state_dir else Path(self.output_dir) / "clients"

    def fingerprint(self) -> str:
        """What a checkpoint must agree with to be resumed (run-shaping fields only; `upload` is not
        one: its forms give the same aggregate, so a run may switch between them and resume).

        `client_init` shapes the run, so it counts, except as `own`: runs from before the key
        existed drew their clients' adapters that way, and keep their fingerprints (and resume) once
        their config says `client_init: own`. Such a run is never resumed as `shared`, which would
        label it with an initialisation it did not have (`resume_hint` says what to add)."""
        return _fingerprint(self.to_dict())

    def resume_hint(self, stored: Any) -> str:
        """What to change when a checkpoint's fingerprint `stored` differs from this config's only by
        `client_init`; "" otherwise."""
        for other in CLIENT_INITS:
            if other != self.client_init and stored == _fingerprint({**self.to_dict(), "client_init": other}):
                return (f"; it was started with client_init: {other}"
                        + (" (as every run before that key existed)" if other == "own" else "")
                        + f", this config says {self.client_init}: set client_init: {other} to resume it")
        return ""

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "FederatedConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
        missing = sorted(n for n, f in fields.items()
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                         and n not in data)
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {missing}")
        values = {k: _coerce(k, v, source) for k, v in data.items()}
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "FederatedConfig":
        path = Path(path)
        data = read_settings(path, what="federated config", error=ConfigError)
        if isinstance(data, dict) and isinstance(data.get("node_keys"), dict):   # key files beside the config
            data["node_keys"] = {k: str((path.parent / v).resolve()) if isinstance(v, str) and
                                 not Path(v).is_absolute() else v for k, v in data["node_keys"].items()}
        cfg = cls.from_dict(data, source=str(path))
        # relative paths in a config file are relative to the file, not to the current directory
        for key in ("data_dir", "output_dir", "state_dir", "model"):
            value = getattr(cfg, key)
            if value and not Path(value).is_absolute() and (key != "model" or (path.parent / value).exists()):
                setattr(cfg, key, str((path.parent / value).resolve()))
        return cfg

    def to_run_config(self) -> dict[str, Union[str, int, float, bool]]:
        """Flower's run config holds scalars only: lists become comma-separated strings, None "" ."""
        out: dict[str, Union[str, int, float, bool]] = {}
        for k, v in self.to_dict().items():
            if isinstance(v, dict):
                v = json.dumps(v, sort_keys=True)
            elif isinstance(v, list):
                v = ",".join(str(x) for x in v)
            elif v is None:
                v = ""
            out[k] = v
        return out

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], source: str = "run config") -> "FederatedConfig":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        data: dict[str, Any] = {}
        for k, v in run_config.items():
            if k in fields and v == "" and k not in ("model", "data_dir", "method", "output_dir"):
                data[k] = None
            elif k in ("byzantine", "dp", "node_keys", "secagg") and isinstance(v, str):
                data[k] = json.loads(v)
            elif k in ("ranks",) and isinstance(v, str):
                data[k] = [int(x) for x in v.split(",") if x.strip()]
            else:
                data[k] = v
        return cls.from_dict(data, source=source)


SECAGG_DEFAULTS: dict[str, float] = {"clipping_range": 8.0, "quantization_range": 4194304,
                                     "reconstruction_threshold": 0.6, "max_weight": 1000.0}

_ADDED_LATER: dict[str, Any] = {"aggregation": "fedavg", "trim_fraction": 0.2, "byzantine_clients": 0,
                                "multikrum_keep": None, "byzantine": None, "dp": None, "node_keys": None, "secagg": None}


def _fingerprint(values: Mapping[str, Any]) -> str:
    keep = {k: v for k, v in values.items()
            if k not in ("output_dir", "state_dir", "progress", "device", "round_timeout", "connect_timeout",
                         "rounds", "eval_every", "client_timeout", "node_keys", "upload")
            and not k.startswith("feddpa_")}  # evaluation-only; also keeps older runs' fingerprints
    if keep["client_init"] == "own":
        del keep["client_init"]
    for key, default in _ADDED_LATER.items():   # at their defaults they leave older runs' fingerprints alone
        if keep.get(key, default) == default:
            keep.pop(key, None)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")


def _coerce(key: str, value: Any, source: str) -> Any:
    """YAML and Flower's run config give ints where floats are meant and strings for lists."""
    if key in ("lr", "weight_decay", "local_epochs", "fraction", "lora_dropout", "lora_alpha", "client_timeout",
               "round_timeout", "connect_timeout", "feddpa_similarity_scale", "trim_fraction"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if key == "ranks" and isinstance(value, str):
        try:
            return [int(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"{source}: ranks: expected integers, got {value!r}") from None
    if key == "targets" and isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if key in ("model", "data_dir", "method", "output_dir", "template", "device", "state_dir",
               "feddpa_weighting", "client_init", "aggregation", "upload") and value is not None \
            and not isinstance(value, str):
        raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
    return value
