"""Communication accounting: parameters and bytes each client sends and receives per round,
from a model config alone (no weights), and the same figures measured from real tensors.

Per adapted layer (d_in x d_out), client rank r_i, n clients, d_m the decomposition width:

    method        setting   upload (client i)      download (each client)
    fedit         hom       (d_in + d_out) r       (d_in + d_out) r
    feddpa        hom       2 (d_in + d_out) r     2 (d_in + d_out) r     paper's count, see below
    fedsa         hom       d_in r                 d_in r
    fedalora      hom       d_out r                d_out r
    zeropadding   het       (d_in + d_out) r_i     (d_in + d_out) r_max
    flora         het       (d_in + d_out) r_i     (d_in + d_out) sum_j r_j
    fedalora      het       (d_out + d_m) r_i      d_out d_m             (B1, B2 up; B0 down)
    fedsa         het       (d_in + d_m) r_i       d_in d_m              (A1, A2 up; A0 down)

The decomposition's upload depends on `upload` (see algorithms/decomposed.py): factors as above,
product d_out d_m (d_in d_m) whatever the rank, auto the smaller of the two per layer and client.

Two documented departures, both reported beside the main figure:
- FedDPA sends only its global LoRA, i.e. FedIT's traffic (`wire_*`); the paper's Table 4 counts
  it twice (16.78 M for LLaMA-2-7B), and the main figure follows the paper.
- For the decomposition the paper prints 12.12 M where the factors sent give 12.09 M; 12.12 is
  an upload of (d_out + 2 d_m) r_i (`paper_total_params`, whatever `upload` says). The main
  figure is what is sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from ..files import read_settings

if TYPE_CHECKING:
    import torch

UPLOADS: tuple[str, ...] = ("factors", "product", "auto")
"""What a decomposed client sends (`algorithms.decomposed`): the factors, their product, or the
smaller of the two for its rank."""


def sends_product(upload: str, product_params: int, factor_params: int) -> bool:
    """Whether a module is uploaded as its product under `upload` (auto: when no larger)."""
    return upload == "product" or (upload == "auto" and product_params <= factor_params)

KNOWN_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COMM_METHODS: tuple[str, ...] = ("fedit", "feddpa", "fedsa", "fedalora", "zeropadding", "flora")
_DISPLAY = {"fedit": "FedIT", "feddpa": "FedDPA", "fedsa": "FedSA-LoRA", "fedalora": "Fed-ALoRA",
            "zeropadding": "ZeroPadding", "flora": "FLoRA"}

ConfigSource = Union[str, Path, Mapping[str, Any]]


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a Llama-style transformers config that fix every projection's shape."""
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: Optional[int]
    num_hidden_layers: int
    source: str = "<dict>"


def load_model_config(source: ConfigSource) -> ModelShape:
    """Read a transformers config: a dict, a config.json path, or a folder holding config.json."""
    if isinstance(source, Mapping):
        cfg, where = dict(source), "<dict>"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "config.json"
        where = str(path)
        cfg = read_settings(path, what="model config", fmt="json")
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]  # multimodal configs nest the language model's

    def need(name: str) -> int:
        if cfg.get(name) is None:
            raise ValueError(f"{where}: field {name!r} is missing; a Llama-style config needs hidden_size, "
                             "num_attention_heads, num_hidden_layers (and intermediate_size for MLP targets)")
        return positive(cfg[name], f"{where}: field {name!r}")

    hidden, heads, layers = need("hidden_size"), need("num_attention_heads"), need("num_hidden_layers")
    kv = need("num_key_value_heads") if cfg.get("num_key_value_heads") is not None else heads
    if cfg.get("head_dim") is not None:
        head_dim = need("head_dim")
    elif hidden % heads:
        raise ValueError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
                         "and no head_dim is given")
    else:
        head_dim = hidden // heads
    inter = need("intermediate_size") if cfg.get("intermediate_size") is not None else None
    return ModelShape(hidden, heads, kv, head_dim, inter, layers, where)


def positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class LayerShape:
    module: str
    d_in: int
    d_out: int
    count: int  # how many such layers (one per transformer block)


def module_dims(shape: ModelShape, module: str) -> tuple[int, int]:
    """(d_in, d_out) of one projection."""
    h, q, kv = shape.hidden_size, shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    if module in ("gate_proj", "up_proj", "down_proj"):
        if shape.intermediate_size is None:
            raise ValueError(f"{shape.source}: {module} needs intermediate_size, which the config lacks")
        i = shape.intermediate_size
        return (i, h) if module == "down_proj" else (h, i)
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
    if module not in dims:
        raise ValueError(f"unknown target module {module!r}; known: {', '.join(KNOWN_MODULES)}")
    return dims[module]


def layer_shapes(config: Union[ConfigSource, ModelShape], targets: Sequence[str]) -> list[LayerShape]:
    shape = config if isinstance(config, ModelShape) else load_model_config(config)
    targets = [t.strip() for t in targets if t.strip()]
    if not targets:
        raise ValueError(f"no target modules given; known: {', '.join(KNOWN_MODULES)}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"target modules repeated: {', '.join(targets)}")
    return [LayerShape(t, *module_dims(shape, t), shape.num_hidden_layers) for t in targets]


@dataclass
class ClientComm:
    client: int
    rank: int
    upload_form: str  # factors, product, or mixed (auto, where layers of different shapes differ)
    upload_params: int
    download_params: int
    total_params: int
    upload_bytes: int
    download_bytes: int
    total_bytes: int


@dataclass
class CommReport:
    """Per client per round; the top-level figures are means over clients (the paper's Params.)."""
    method: str
    setting: str
    targets: list[str]
    ranks: list[int]
    dm: Optional[int]
    upload: str
    num_clients: int
    dtype_bytes: int
    num_adapted_layers: int
    upload_params: float
    download_params: float
    total_params: float
    upload_bytes: float
    download_bytes: float
    total_bytes: float
    wire_upload_params: float
    wire_download_params: float
    wire_total_params: float
    paper_total_params: float
    layers: list[LayerShape] = field(default_factory=list)
    clients: list[ClientComm] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _product_sent(method: str, het: bool, d_in: int, d_out: int, r: int, dm: Optional[int], upload: str) -> bool:
    """Whether a client of rank r sends this layer's decomposition as its product."""
    if method not in ("fedalora", "fedsa") or not het:
        return False
    side = d_in if method == "fedsa" else d_out
    return sends_product(upload, side * dm, (side + dm) * r)


def _per_layer(method: str, het: bool, d_in: int, d_out: int, r: int, ranks: Sequence[int],
               dm: Optional[int], convention: str, upload: str = "factors") -> tuple[int, int]:
    """(upload, download) parameters of one adapted layer for a client of rank r."""
    full = d_in + d_out
    if method in ("fedit", "feddpa"):
        k = 2 if (method == "feddpa" and convention != "wire") else 1
        return k * full * r, k * full * r
    if method == "zeropadding":
        return full * r, full * max(ranks)
    if method == "flora":
        return full * r, full * sum(ranks)
    side = d_in if method == "fedsa" else d_out
    if not het:
        return side * r, side * r
    if convention == "paper":
        return (side + 2 * dm) * r, side * dm
    if _product_sent(method, het, d_in, d_out, r, dm, upload):
        return side * dm, side * dm
    return (side + dm) * r, side * dm


def comm_cost(config: Union[ConfigSource, ModelShape], targets: Sequence[str], method: str,
              ranks: Sequence[int], *, dm: Optional[int] = None, num_clients: Optional[int] = None,
              dtype_bytes: int = 4, upload: str = "factors") -> CommReport:
    """What each client uploads and downloads per round under `method`.

    `ranks`: one rank per client, or a single rank shared by `num_clients` clients. fedalora and
    fedsa use the decomposition (heterogeneous setting) when `dm` is given; they need it when the
    ranks differ. fedit and feddpa need one rank. `dm` is ignored by the other methods. `upload`
    (factors, product, auto) is the decomposition's upload form; other settings send factors.
    """
    if method not in COMM_METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(COMM_METHODS)}")
    ranks = [positive(r, "rank") for r in ranks]
    if not ranks:
        raise ValueError("no ranks given")
    if num_clients is not None:
        positive(num_clients, "num_clients")
        if len(ranks) == 1:
            ranks = ranks * num_clients
        elif len(ranks) != num_clients:
            raise ValueError(f"{len(ranks)} ranks given for {num_clients} clients")
    positive(dtype_bytes, "dtype_bytes")
    if dm is not None:
        positive(dm, "dm")
    distinct = len(set(ranks)) > 1
    notes: list[str] = []
    if method in ("fedit", "feddpa") and distinct:
        raise ValueError(f"{method} averages A and B element-wise and needs one rank for all clients, got "
                         f"{ranks}; for different ranks use zeropadding, flora, or fedalora/fedsa with --dm")
    if method in ("fedalora", "fedsa"):
        het = dm is not None
        if distinct and not het:
            raise ValueError(f"{method} with different ranks {ranks} uses the decomposition of SPEC §2 and "
                             "needs its width d_m (--dm, the paper uses 16)")
    else:
        het = distinct
        if dm is not None:
            notes.append(f"d_m is not used by {method}; ignored")
    if upload not in UPLOADS:
        raise ValueError(f"unknown upload {upload!r}; known: {', '.join(UPLOADS)}")
    if upload != "factors" and not (method in ("fedalora", "fedsa") and het):
        raise ValueError(f"upload {upload} applies to the decomposition only (fedalora or fedsa with --dm); "
                         f"{method} sends its factors")
    setting = "heterogeneous" if het else "homogeneous"
    layers = layer_shapes(config, targets)

    def totals(r: int, convention: str) -> tuple[int, int]:
        up = down = 0
        for ls in layers:
            u, d = _per_layer(method, het, ls.d_in, ls.d_out, r, ranks, dm, convention, upload)
            up, down = up + u * ls.count, down + d * ls.count
        return up, down

    def form(r: int) -> str:
        sent = {_product_sent(method, het, ls.d_in, ls.d_out, r, dm, upload) for ls in layers}
        return "mixed" if len(sent) > 1 else ("product" if sent == {True} else "factors")

    clients = []
    for i, r in enumerate(ranks):
        up, down = totals(r, "table")
        clients.append(ClientComm(i, r, form(r), up, down, up + down, up * dtype_bytes, down * dtype_bytes,
                                  (up + down) * dtype_bytes))
    n = len(ranks)
    mean = lambda xs: sum(xs) / n  # noqa: E731
    wire = [totals(r, "wire") for r in ranks]
    paper = [sum(totals(r, "paper")) for r in ranks]
    up_m, down_m = mean([c.upload_params for c in clients]), mean([c.download_params for c in clients])
    if method == "feddpa":
        notes.append("FedDPA sends only its global LoRA (FedIT's traffic, wire_*); the paper's Table 4 "
                     "counts it twice, as reported here")
    if method in ("fedalora", "fedsa") and het:
        notes.append("the paper prints this setting as paper_total_params: an upload of "
                     "(d + 2 d_m) r_i instead of the (d + d_m) r_i of the factors")
    if method == "flora" and num_clients is None and len(ranks) == 1:
        notes.append("FLoRA's download grows with the number of clients; give every client's rank "
                     "or --num-clients")
    return CommReport(
        method=method, setting=setting, targets=[ls.module for ls in layers], ranks=list(ranks), dm=dm, upload=upload,
        num_clients=n, dtype_bytes=dtype_bytes, num_adapted_layers=sum(ls.count for ls in layers),
        upload_params=up_m, download_params=down_m, total_params=up_m + down_m,
        upload_bytes=up_m * dtype_bytes, download_bytes=down_m * dtype_bytes,
        total_bytes=(up_m + down_m) * dtype_bytes,
        wire_upload_params=mean([w[0] for w in wire]), wire_download_params=mean([w[1] for w in wire]),
        wire_total_params=mean([w[0] + w[1] for w in wire]), paper_total_params=mean(paper),
        layers=layers, clients=clients, notes=notes,
    )


@dataclass
class MeasuredComm:
    """Traffic of one round counted from the tensors themselves (each client gets the broadcast)."""
    upload_params: float
    download_params: int
    total_params: float
    upload_bytes: float
    download_bytes: int
    total_bytes: float
    per_client_upload_params: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _numel(tensors: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    return (sum(int(t.numel()) for t in tensors.values()),
            sum(int(t.numel()) * t.element_size() for t in tensors.values()))


def measure_comm(uploads: Sequence[Mapping[str, torch.Tensor]], broadcast: Mapping[str, torch.Tensor]) -> MeasuredComm:
    if not uploads:
        raise ValueError("no uploads to measure")
    counted = [_numel(u) for u in uploads]
    up = sum(c[0] for c in counted) / len(counted)
    up_b = sum(c[1] for c in counted) / len(counted)
    down, down_b = _numel(broadcast)
    return MeasuredComm(up, down, up + down, up_b, down_b, up_b + down_b, [c[0] for c in counted])


def format_table(report: CommReport) -> str:
    """A plain-text table: one row per client, then the mean (Params.(M) in the paper's tables)."""
    name = _DISPLAY[report.method] + ("*" if report.method == "fedsa" and report.setting == "heterogeneous" else "")
    dm = (f", d_m = {report.dm}, upload {report.upload}" if report.setting == "heterogeneous"
          and report.method in ("fedalora", "fedsa") else "")
    shapes = ", ".join(f"{ls.module} {ls.d_in}->{ls.d_out}" for ls in report.layers)
    lines = [
        f"{name} ({report.setting}{dm}): {report.num_adapted_layers} adapted layers ({shapes}), "
        f"{report.dtype_bytes} bytes per parameter; per client per round",
        f"{'client':>6} {'rank':>5} {'sends':>8} {'upload':>14} {'download':>14} {'total':>14} {'total MB':>10}",
    ]
    for c in report.clients:
        lines.append(f"{c.client:>6} {c.rank:>5} {c.upload_form:>8} {c.upload_params:>14,} {c.download_params:>14,} "
                     f"{c.total_params:>14,} {c.total_bytes / 1e6:>10.2f}")
    lines.append(f"{'mean':>6} {'':>5} {'':>8} {report.upload_params:>14,.0f} {report.download_params:>14,.0f} "
                 f"{report.total_params:>14,.0f} {report.total_bytes / 1e6:>10.2f}")
    lines.append(f"Params.(M) = {report.total_params / 1e6:.2f} (the paper counts this setting as "
                 f"{report.paper_total_params / 1e6:.2f})")
    if report.wire_total_params != report.total_params:
        lines.append(f"tensors actually sent: {report.wire_total_params / 1e6:.2f} M")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
