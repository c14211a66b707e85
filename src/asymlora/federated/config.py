"""The configuration of a federated run: one YAML file, read strictly (an unknown or mistyped key is
an error, never silently ignored), and the same values flattened into Flower's run config, so the
in-process engine, the simulation and a real deployment all read one description of the run.

The file reuses the sections of a training or comparison config as they spell them -- `model`,
`data_dir`, `output_dir`, `adapter:` (target_modules, lora_alpha, lora_dropout), `training:` (the
keys of `TrainConfig`, for each client's local training in a round) and `evaluation:` (batch_size,
max_new_tokens, num_beams) -- and adds at the top level only what is federated (method, ranks,
rounds, sampling, FedDPA's evaluation, the Flower timeouts). Files written before the sections
existed still load: each moved key goes to its new place with one warning line saying where.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..files import read_settings
from ..train.config import ConfigError as TrainConfigError
from ..train.config import TrainConfig, check_value, from_dict_strict
from .aggregation import AggregationError, AggregationRule
from .algorithms import METHOD_NAMES, build_method
from .algorithms.base import FederatedMethod
from .comm import UPLOADS
from .algorithms.feddpa import DEFAULT_SIMILARITY_SCALE, WEIGHTINGS
from .byzantine import Attack
from .dp import DPSettings
from .identity import key_map

log = logging.getLogger("asymlora.federated")


class ConfigError(TrainConfigError):
    """A federated config is unusable; the message names the file and the key."""


CLIENT_INITS: tuple[str, ...] = ("shared", "own")
"""How clients draw their initial adapters (`client.initial_adapter_state`): all from the run's seed,
as if the server had broadcast one, or each from its own seed."""

SECTIONS: tuple[str, ...] = ("adapter", "training", "evaluation")

MOVED_KEYS: dict[str, tuple[str, str]] = {
    "targets": ("adapter", "target_modules"),
    "lora_alpha": ("adapter", "lora_alpha"),
    "lora_dropout": ("adapter", "lora_dropout"),
    "lr": ("training", "learning_rate"),
    "local_epochs": ("training", "num_epochs"),
    "max_local_steps": ("training", "max_steps"),
    "batch_size": ("training", "batch_size"),
    "grad_accum": ("training", "grad_accum"),
    "weight_decay": ("training", "weight_decay"),
    "cutoff_len": ("training", "cutoff_len"),
    "template": ("training", "template"),
    "max_new_tokens": ("evaluation", "max_new_tokens"),
    "eval_batch_size": ("evaluation", "batch_size"),
}
"""Keys of the flat config files (before the sections) and where they live now."""

NOT_PER_ROUND: dict[str, str] = {
    "seed": "every client's round is seeded from the run's top-level seed; set seed there",
    "save_steps": "a round saves no Trainer checkpoint (the client keeps its own state)",
    "save_total_limit": "a round saves no Trainer checkpoint (the client keeps its own state)",
    **{key: "a federated client trains on a full-precision base (quantised bases: asymlora train only)"
       for key in ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype")},
}
"""Training-config keys that mean nothing in a federated round, refused with the reason."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class AdapterSection:
    """`adapter:` -- the keys a comparison config's adapter section spells; the rank comes from `ranks`."""

    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                      metadata=_help("adapted modules"))
    lora_alpha: Optional[float] = field(default=None, metadata=_help("default 2 x rank"))
    lora_dropout: float = field(default=0.05, metadata=_help("dropout on the adapter input"))

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        if not self.target_modules:
            raise ConfigError("target_modules: no modules to adapt")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ConfigError(f"lora_alpha: must be a finite number > 0, got {self.lora_alpha!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:  # NaN fails this too
            raise ConfigError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout!r}")


@dataclass
class LocalTraining(TrainConfig):
    """`training:` -- a training config's keys, for one client's local training in one round. The
    defaults differ where a round differs from a whole run: one epoch, a constant learning rate (a
    fresh schedule every round), the loss logged at every step."""

    learning_rate: float = 5e-4
    num_epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr_scheduler: str = "constant"
    logging_steps: int = 1


@dataclass
class Evaluation:
    """`evaluation:` -- generation on each client's test set (the keys of a comparison config's)."""

    batch_size: int = field(default=8, metadata=_help("generation batch size"))
    max_new_tokens: int = field(default=32, metadata=_help("generation length"))
    num_beams: int = field(default=1, metadata=_help("beam search width (1: greedy)"))

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "num_beams"):
            _positive_int(getattr(self, name), name)


SECTION_TYPES: dict[str, type] = {"adapter": AdapterSection, "training": LocalTraining, "evaluation": Evaluation}


@dataclass
class FederatedConfig:
    """Everything a federated run needs. Keys match the YAML file (see configs/federated/)."""

    model: str = field(metadata=_help("base model: a local directory, a hub name, or smollm2-135m"))
    data_dir: str = field(metadata=_help("FLAN layout: local_training_{i}.json per client and test.jsonl"))
    method: str = field(metadata=_help(f"one of {', '.join(METHOD_NAMES)}"))
    output_dir: str = field(metadata=_help("results, server checkpoints, plots"))
    adapter: AdapterSection = field(default_factory=AdapterSection, metadata=_help("section: the adapter"))
    training: LocalTraining = field(default_factory=LocalTraining,
                                    metadata=_help("section: each client's local training per round"))
    evaluation: Evaluation = field(default_factory=Evaluation, metadata=_help("section: generation at evaluation"))
    ranks: list[int] = field(default_factory=lambda: [8],
                             metadata=_help("one rank per client, or one rank for every client"))
    num_clients: Optional[int] = field(default=None, metadata=_help("clients, when `ranks` has one value"))
    heterogeneous: Optional[bool] = field(
        default=None, metadata=_help("fedalora/fedsa: use the decomposed layer; default: when ranks differ"))
    d_m: int = field(default=16, metadata=_help("intermediate width of the decomposition"))
    upload: str = field(
        default="factors", metadata=_help("the decomposition's upload: factors (B1, B2 as in the paper), product "
                                          "(B2 B1, d_out x d_m), auto (whichever is smaller for each client's rank)"))
    rounds: int = field(default=10, metadata=_help("communication rounds"))
    fraction: float = field(default=1.0, metadata=_help("fraction of clients sampled per round"))
    min_clients: int = field(default=1, metadata=_help("valid updates needed to aggregate a round"))
    client_timeout: Optional[float] = field(default=None, metadata=_help("seconds; a later reply is dropped"))
    seed: int = field(default=0, metadata=_help("initialisation, sampling, data order and each round's training"))
    client_init: str = field(
        default="shared", metadata=_help("shared: every client starts from one initial adapter (drawn from the seed, "
                                         "as if the server had broadcast it; a smaller rank takes a prefix of the "
                                         "largest rank's draw); own: each client draws its own"))
    max_train_examples: Optional[int] = field(default=None, metadata=_help("per client, first N"))
    max_eval_examples: Optional[int] = field(default=None, metadata=_help("per client and task, first N"))
    eval_every: int = field(default=1, metadata=_help("evaluate every N rounds (the last always)"))
    feddpa_weighting: str = field(
        default="dynamic", metadata=_help("FedDPA at evaluation: dynamic (each test instance weights the global and "
                                          "local adapters by its similarity to the client's data) or fixed (1 and 1)"))
    feddpa_reference_size: int = field(
        default=16, metadata=_help("FedDPA: local training prompts whose representations are stored per client"))
    feddpa_similarity_scale: float = field(
        default=DEFAULT_SIMILARITY_SCALE, metadata=_help("FedDPA: local weight = this x mean cosine similarity"))
    state_dir: Optional[str] = field(default=None, metadata=_help("clients' private state; default output_dir/clients"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:0, ..."))
    progress: bool = field(default=True, metadata=_help("tqdm progress bars of the rounds"))
    round_timeout: float = field(default=3600.0, metadata=_help("Flower: seconds to wait for replies"))
    connect_timeout: float = field(default=600.0, metadata=_help("Flower: seconds to wait for the nodes"))
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
        if isinstance(self.ranks, int) and not isinstance(self.ranks, bool):
            self.ranks = [self.ranks]
        for name, cls in SECTION_TYPES.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, _section(cls, value, name))
            elif not isinstance(value, cls):
                raise ConfigError(f"{name}: expected a mapping of settings, got {type(value).__name__}")
        self.validate()

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> None:
        """Every value, before anything loads; a problem is one ConfigError naming the key."""
        if self.method not in METHOD_NAMES:
            raise ConfigError(f"method: unknown federated method {self.method!r}; known: {', '.join(METHOD_NAMES)}")
        if not isinstance(self.ranks, list) or not self.ranks or any(
                isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in self.ranks):
            raise ConfigError(f"ranks: expected a positive integer or a list of them, got {self.ranks!r}")
        if self.num_clients is not None:
            _positive_int(self.num_clients, "num_clients")
            if len(self.ranks) not in (1, self.num_clients):
                raise ConfigError(f"ranks: {len(self.ranks)} ranks given for num_clients {self.num_clients}")
        for name in ("d_m", "rounds", "min_clients", "eval_every", "feddpa_reference_size"):
            _positive_int(getattr(self, name), name)
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)
        if not (0.0 < float(self.fraction) <= 1.0):
            raise ConfigError(f"fraction: must be in (0, 1], got {self.fraction!r}")
        for name in ("client_timeout", "round_timeout", "connect_timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
                raise ConfigError(f"{name}: must be a finite number of seconds > 0, got {value!r}")
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
        if self.min_clients > self.n_clients:
            raise ConfigError(f"min_clients {self.min_clients} exceeds the {self.n_clients} clients of the run")
        if self.method == "feddpa" and self.feddpa_weighting == "dynamic" and self.evaluation.num_beams > 1:
            raise ConfigError("evaluation.num_beams: FedDPA's dynamic weighting scores each prompt once, without "
                              "beams; set num_beams: 1 or feddpa_weighting: fixed")
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

    def check_data(self) -> None:
        """`data_dir` holds every client's training file and the test file: checked before a model
        loads wherever the clients read `data_dir` (not on a deployment's server, whose nodes name
        their own files)."""
        root = Path(self.data_dir)
        if not root.is_dir():
            raise ConfigError(f"data_dir: {root} does not exist or is not a folder")
        missing = [f"local_training_{i}.json" for i in range(self.n_clients)
                   if not (root / f"local_training_{i}.json").is_file()]
        from ..data.records import split_file

        if split_file(root, "test", required=False) is None:
            missing.append("a test file (test.jsonl, test.json or global_test.json)")
        if missing:
            raise ConfigError(f"data_dir: {root} lacks {', '.join(missing)} (the FLAN layout, one file per client)")

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

    def alpha_of(self, rank: int) -> float:
        return float(self.adapter.lora_alpha) if self.adapter.lora_alpha is not None else 2.0 * rank

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
        """What a checkpoint must agree with to be resumed: the settings that shape the run's
        trajectory (not where it writes, how long it waits, what it shows or how it evaluates; nor
        `upload`: its forms give the same aggregate, so a run may switch between them and resume)."""
        return _fingerprint(self.to_dict())

    def resume_hint(self, stored: Any) -> str:
        """What to change when a checkpoint's fingerprint `stored` differs from this config's only by
        `client_init`; "" otherwise."""
        for other in CLIENT_INITS:
            if other != self.client_init and stored == _fingerprint({**self.to_dict(), "client_init": other}):
                return (f"; it was started with client_init: {other}, this config says {self.client_init}: "
                        f"set client_init: {other} to resume it")
        return ""

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The YAML layout: top-level federated keys, and one mapping per section."""
        out = dataclasses.asdict(self)
        for key in NOT_PER_ROUND:
            out["training"].pop(key)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "FederatedConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
        data = _move_flat_keys(dict(data), source)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
        missing = sorted(n for n, f in fields.items()
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                         and n not in data)
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {missing}")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in SECTION_TYPES:
                values[key] = _section(SECTION_TYPES[key], value if value is not None else {}, f"{source}: {key}")
            elif key == "ranks" and isinstance(value, int) and not isinstance(value, bool):
                values[key] = [value]
            else:
                try:
                    values[key] = check_value(value, hints[key], f"{source}: {key}")
                except TrainConfigError as exc:
                    raise ConfigError(str(exc)) from None
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
        """Flower's run config holds scalars only: a section's keys become `section.key`, lists
        comma-separated strings, mappings JSON, None "" ."""
        out: dict[str, Union[str, int, float, bool]] = {}
        for key, value in self.to_dict().items():
            items = value.items() if key in SECTION_TYPES else [(None, value)]
            for sub, v in items:
                if isinstance(v, list):
                    v = ",".join(str(x) for x in v)
                elif isinstance(v, dict):
                    v = json.dumps(v, sort_keys=True)
                elif v is None:
                    v = ""
                out[key if sub is None else f"{key}.{sub}"] = v
        return out

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], source: str = "run config") -> "FederatedConfig":
        data: dict[str, Any] = {}
        top_hints = typing.get_type_hints(cls)
        for key, value in run_config.items():
            section, _, sub = key.partition(".")
            if sub and section in SECTION_TYPES:
                hint = typing.get_type_hints(SECTION_TYPES[section]).get(sub)
                data.setdefault(section, {})[sub] = _from_scalar(value, hint)
            else:
                data[key] = _from_scalar(value, top_hints.get(key))
        return cls.from_dict(data, source=source)


def _section(cls: type, value: Any, where: str) -> Any:
    """One section from its mapping, strictly; errors name `where.key`."""
    if isinstance(value, Mapping) and cls is LocalTraining:
        refused = sorted(set(value) & set(NOT_PER_ROUND))
        if refused:
            raise ConfigError(f"{where}.{refused[0]}: not a federated setting: {NOT_PER_ROUND[refused[0]]}")
    try:
        return from_dict_strict(cls, dict(value) if isinstance(value, Mapping) else value, where)
    except TrainConfigError as exc:  # a section's own check names the key, not yet the section
        message = str(exc)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None


def _move_flat_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A flat (pre-section) file's keys moved to their sections, each with one warning line."""
    for old, (section, new) in MOVED_KEYS.items():
        if old not in data:
            continue
        value = data.pop(old)
        block = data.get(section)
        block = dict(block) if isinstance(block, Mapping) else {} if block is None else block
        if not isinstance(block, dict):
            raise ConfigError(f"{source}: {section}: expected a mapping of settings, got {type(block).__name__}")
        if new in block:
            raise ConfigError(f"{source}: {old} and {section}.{new} are both given; {old} moved to "
                              f"{section}.{new}: remove {old}")
        if old == "max_local_steps" and value is None:
            value = -1
        block[new] = value
        data[section] = block
        log.warning("%s: `%s` moved to `%s.%s`; it still works here, write it there", source, old, section, new)
    return data


def _from_scalar(value: Any, hint: Any) -> Any:
    """Undo `to_run_config` for one value, by the type the field declares."""
    if not isinstance(value, str) or hint is None:
        return value
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if value == "" and type(None) in args:
        return None
    kinds = [typing.get_origin(a) or a for a in (args or (hint,))] if origin is Union else [origin or hint]
    if dict in kinds:
        return json.loads(value) if value else {}
    if list in kinds and (str not in kinds or "," in value):
        inner = typing.get_args(hint if origin is list else next(a for a in args if typing.get_origin(a) is list))
        items = [x.strip() for x in value.split(",") if x.strip()]
        if inner and inner[0] is int:
            try:
                return [int(x) for x in items]
            except ValueError:
                return value  # the strict check names the key
        return items
    if float in kinds and str not in kinds:
        try:
            return float(value)
        except ValueError:
            return value
    return value


SECAGG_DEFAULTS: dict[str, float] = {"clipping_range": 8.0, "quantization_range": 4194304,
                                     "reconstruction_threshold": 0.6, "max_weight": 1000.0}

_ADDED_LATER: dict[str, Any] = {"aggregation": "fedavg", "trim_fraction": 0.2, "byzantine_clients": 0,
                                "multikrum_keep": None, "byzantine": None, "dp": None, "node_keys": None, "secagg": None}


def _fingerprint(values: Mapping[str, Any]) -> str:
    keep = {k: v for k, v in values.items()
            if k not in ("output_dir", "state_dir", "progress", "device", "round_timeout", "connect_timeout",
                         "rounds", "eval_every", "client_timeout", "node_keys", "upload", "evaluation")
            and not k.startswith("feddpa_")}  # evaluation-only
    for key, default in _ADDED_LATER.items():   # at their defaults they leave older runs' fingerprints alone
        if keep.get(key, default) == default:
            keep.pop(key, None)
    keep["training"] = {k: v for k, v in keep["training"].items()
                        if k not in ("progress", "report_to", "logging_steps", *NOT_PER_ROUND)}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
