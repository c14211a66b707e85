"""`asymlora comm`: the communication table of a method from a model config, no weights needed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .comm import UPLOADS, COMM_METHODS, KNOWN_MODULES, comm_cost, format_table


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `comm`, `federate` and `privacy` subcommands; handlers are `args.func(args) -> exit code`."""
    register_federate(subparsers)
    register_privacy(subparsers)
    p = subparsers.add_parser(
        "comm", help="parameters and bytes each client sends and receives per round",
        description="Communication per client per round of a federated method, from a transformers "
                    "config alone. Reproduces the paper's Params.(M) (Tables 4-5).")
    p.add_argument("--model", required=True, help="transformers config.json, or a folder that holds one")
    p.add_argument("--targets", default="q_proj,v_proj",
                   help=f"comma-separated adapted modules (known: {','.join(KNOWN_MODULES)})")
    p.add_argument("--method", required=True, choices=COMM_METHODS)
    p.add_argument("--ranks", required=True, type=_int_list,
                   help="one rank for all clients, or one per client: 64,64,32,32,16,16,8,8")
    p.add_argument("--dm", type=int, default=None,
                   help="d_m of the decomposition; with it fedalora/fedsa run heterogeneous")
    p.add_argument("--upload", choices=UPLOADS, default="factors",
                   help="the decomposition's upload: factors (B1, B2, as in the paper), product (B2 B1, "
                        "d x d_m), auto (the smaller, per client rank)")
    p.add_argument("--num-clients", type=int, default=None, help="clients sharing a single --ranks value")
    p.add_argument("--dtype-bytes", type=int, default=4, help="bytes per parameter sent (4 float32, 2 bf16)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.set_defaults(func=run_comm)
    return p


def run_comm(args: argparse.Namespace) -> int:
    try:
        report = comm_cost(args.model, args.targets.split(","), args.method, args.ranks, dm=args.dm,
                           num_clients=args.num_clients, dtype_bytes=args.dtype_bytes, upload=args.upload)
    except (ValueError, FileNotFoundError) as exc:
        print(f"asymlora comm: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_table(report))
    return 0


# ---- federate ------------------------------------------------------------------------------------
ENGINES = ("local", "simulation", "deployment")


def register_federate(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "federate", help="federated fine-tuning of one method (Fed-ALoRA, FedIT, FedSA-LoRA, ...)",
        description="Run a federated fine-tuning described by a YAML config (see configs/federated/). "
                    "Writes results.json, results.md (the paper's Tables 4-5 layout), scores.png and a server "
                    "checkpoint per round to output_dir; a run that was stopped resumes from its last round.")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: in this process, one client after another (one GPU, no Ray); simulation: "
                        "Flower's simulation engine (Ray); deployment: submit to a running Flower SuperLink")
    p.add_argument("--fresh", action="store_true",
                   help="discard the server checkpoint (and, for local/simulation, the clients' state) first")
    p.add_argument("--rounds", type=int, default=None, help="override the config's rounds (e.g. to extend a run)")
    d = p.add_argument_group("deployment engine")
    d.add_argument("--superlink", default=None, help="SuperLink address HOST:PORT (its API port, default 8000)")
    d.add_argument("--connection", default=None, help="a SuperLink connection of your Flower config instead")
    d.add_argument("--insecure", action="store_true", help="no TLS (loopback tests only)")
    d.add_argument("--root-certificates", default=None, help="CA certificate (PEM) that signed the SuperLink's")
    d.add_argument("--app-dir", default=None, help="where to write the Flower App (default output_dir/flower-app)")
    d.add_argument("--write-app-only", action="store_true",
                   help="write the Flower App directory and stop (to submit it yourself with `flwr run`)")
    s = p.add_argument_group("simulation engine")
    s.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per virtual client")
    s.add_argument("--gpus-per-client", type=float, default=0.0, help="Ray GPU share per virtual client")
    p.set_defaults(func=run_federate)
    return p


def run_federate(args: argparse.Namespace) -> int:
    import logging
    import shutil
    from pathlib import Path

    from .config import FederatedConfig

    cfg = FederatedConfig.from_yaml(args.config)
    if args.rounds is not None:
        cfg.rounds = args.rounds
        cfg.validate()
    if args.engine != "deployment":  # a deployment's nodes name their own files
        cfg.check_data()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(cfg.output_dir)
    if args.fresh:
        shutil.rmtree(out / "server", ignore_errors=True)
        if args.engine != "deployment":
            shutil.rmtree(cfg.client_state_root, ignore_errors=True)
    if args.engine == "local":
        from .engine import LocalEngine
        from .flower.strategy import RoundFailedError

        try:
            LocalEngine(cfg).run()
        except RoundFailedError as exc:
            print(f"asymlora federate: error: {exc} (results so far in {out}; fix the cause and run again "
                  "to resume)", file=sys.stderr)
            return 1
    elif args.engine == "simulation":
        from .flower.launch import run_simulation_engine

        run_simulation_engine(cfg, num_cpus_per_client=args.cpus_per_client,
                              num_gpus_per_client=args.gpus_per_client)
    else:
        from .flower.launch import RUN_FAILED, run_deployment, write_app_dir

        if args.write_app_only:
            app = write_app_dir(cfg, Path(args.app_dir or out / "flower-app"))
            print(f"Flower App written to {app}; submit it with: flwr run {app} <superlink-connection> --stream")
            return 0
        code = run_deployment(cfg, superlink=args.superlink, connection=args.connection, insecure=args.insecure,
                              root_certificates=args.root_certificates,
                              app_dir=Path(args.app_dir) if args.app_dir else None)
        if code == RUN_FAILED:
            print("asymlora federate: error: the run failed or was stopped on the SuperLink (its log above; "
                  "`flwr log RUN_ID` against that SuperLink shows it again)", file=sys.stderr)
            return code
        if code != 0:
            print(f"asymlora federate: error: `flwr run` exited with code {code}", file=sys.stderr)
            return code
    failed = _failed_rounds(out)
    if failed:
        print(f"asymlora federate: error: {failed}", file=sys.stderr)
        return 1
    table = out / "results.md"
    if table.exists():
        print(table.read_text(encoding="utf-8"))
        print(f"results: {out / 'results.json'}, plot: {out / 'scores.png'}")
    else:
        print(f"no results in {out}: the ServerApp writes them where it runs (the SuperLink's machine)")
    return 0


def _failed_rounds(out: "Path") -> str:
    """Why the run in `out` did not succeed ("" if it did): a failed round, or no round evaluated."""
    import json

    path = out / "results.json"
    if not path.exists():
        return ""
    results = json.loads(path.read_text(encoding="utf-8"))
    last = (results.get("rounds") or [{}])[-1]
    if last.get("failed"):
        return f"round {last.get('round')}: {last['failed']}; see {out / 'results.json'}"
    if results.get("summary", {}).get("final_round") is None:
        return f"no round was evaluated; see {out / 'results.json'}"
    return ""


# ---- privacy -------------------------------------------------------------------------------------
def register_privacy(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "privacy", help="epsilon of DP rounds (or the noise multiplier for a target epsilon), nothing run",
        description="The (epsilon, delta) of T rounds of the subsampled Gaussian mechanism (central DP: "
                    "clients sampled with probability Q, updates clipped, noise of std Z x the clip on the "
                    "sum), from dp-accounting's RDP accountant. With --target-epsilon: the noise multiplier "
                    "that reaches it.")
    p.add_argument("--noise-multiplier", type=float, help="Z: noise std divided by the clipping norm")
    p.add_argument("--target-epsilon", type=float, help="instead of Z: the epsilon to reach")
    p.add_argument("--sample-rate", type=float, required=True, help="Q: probability that a client takes part "
                                                                    "in a round (1 for local DP)")
    p.add_argument("--rounds", type=int, required=True, help="T: rounds")
    p.add_argument("--delta", type=float, required=True, help="delta, e.g. 1 / number of training examples")
    p.add_argument("--json", action="store_true", help="print a JSON object (key epsilon, noise_multiplier)")
    p.set_defaults(func=run_privacy)
    return p


def run_privacy(args: argparse.Namespace) -> int:
    from .privacy import PrivacyError, budget, noise_for_epsilon

    if (args.noise_multiplier is None) == (args.target_epsilon is None):
        print("asymlora privacy: error: give exactly one of --noise-multiplier and --target-epsilon", file=sys.stderr)
        return 2
    try:
        z = args.noise_multiplier
        if z is None:
            z = noise_for_epsilon(args.target_epsilon, args.sample_rate, args.rounds, args.delta)
        result = budget(z, args.sample_rate, args.rounds, args.delta)
    except PrivacyError as exc:
        print(f"asymlora privacy: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"epsilon {result.epsilon:.4g} at delta {result.delta:g} after {result.rounds} rounds: noise "
              f"multiplier {result.noise_multiplier:.4g}, sample rate {result.sample_rate:g} (RDP accountant)")
    return 0
