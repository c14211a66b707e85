"""Starting a run on Flower's two engines.

- Simulation: `flwr.simulation.run_simulation` with our ServerApp and ClientApp objects, one
  virtual SuperNode per client on Ray, the run config bound into the apps (the Python simulation
  API has no run config of its own).
- Deployment: a Flower App directory (`pyproject.toml` naming our apps, the run config in
  `[tool.flwr.app.config]`) submitted with `flwr run` to a running SuperLink; the SuperNodes, one
  per client machine, are started by their owners (see docs/federated.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from ..config import FederatedConfig

APP_MODULE = "asymlora.federated.flower.apps"
log = logging.getLogger("asymlora.federated")


def flower_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for every Flower process we start: no telemetry, no run-time pip installs,
    this interpreter's scripts (flower-superexec, flwr-serverapp, ...) first on PATH."""
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def run_simulation_engine(cfg: FederatedConfig, *, num_cpus_per_client: float = 1.0,
                          num_gpus_per_client: float = 0.0, client_mods: Optional[list] = None) -> None:
    """Run `cfg` on Flower's simulation engine (Ray), one virtual SuperNode per client."""
    import warnings

    from flwr.simulation import run_simulation

    from .apps import build_client_app, build_server_app

    run_config = cfg.to_run_config()
    backend: dict[str, Any] = {"client_resources": {"num_cpus": num_cpus_per_client,
                                                    "num_gpus": num_gpus_per_client},
                               "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server_app=build_server_app(run_config),
                       client_app=build_client_app(run_config, mods=client_mods),
                       num_supernodes=cfg.n_clients, backend_config=backend)


def app_pyproject(cfg: FederatedConfig) -> str:
    """pyproject.toml of a Flower App that runs `cfg` with asymlora's apps."""
    import tomli_w

    from ... import __version__

    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "asymlora-federated", "version": __version__,
                    "description": f"asymlora federated fine-tuning ({cfg.method})", "license": "Apache-2.0",
                    "dependencies": [f"asymlora=={__version__}"]},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "asymlora",
                                  "components": {"serverapp": f"{APP_MODULE}:server_app",
                                                 "clientapp": f"{APP_MODULE}:client_app"},
                                  "config": cfg.to_run_config()}}},
    }
    return tomli_w.dumps(doc)


def write_app_dir(cfg: FederatedConfig, app_dir: Path) -> Path:
    """A Flower App directory for `flwr run`. The code itself is the installed asymlora package
    (every node needs it installed; nothing is pip-installed at run time)."""
    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject(cfg), encoding="utf-8")
    (app_dir / "asymlora_app.py").write_text(
        '"""Marker module: the apps are asymlora.federated.flower.apps:server_app / client_app."""\n',
        encoding="utf-8")
    return app_dir


def flwr_home_for(address: str, *, insecure: bool, root_certificates: Optional[str], home: Path) -> Path:
    """A private FLWR_HOME whose config.toml names one SuperLink connection, `asymlora`."""
    import tomli_w

    conn: dict[str, Any] = {"address": address}
    if insecure:
        conn["insecure"] = True
    if root_certificates:
        conn["root-certificates"] = str(Path(root_certificates).resolve())
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "asymlora", "asymlora": conn}}),
                                      encoding="utf-8")
    return home


def run_deployment(cfg: FederatedConfig, *, superlink: Optional[str] = None, connection: Optional[str] = None,
                   insecure: bool = False, root_certificates: Optional[str] = None,
                   app_dir: Optional[Path] = None, stream: bool = True, timeout: Optional[float] = None) -> int:
    """Submit `cfg` to a running SuperLink with `flwr run`; returns flwr's exit code, or RUN_FAILED
    when the SuperLink says the run did not complete (`flwr run --stream` exits 0 whatever became
    of it; without `stream` only a run already failed or stopped counts).

    Either `superlink` (host:port of the SuperLink's API; TLS unless `insecure`, verified against
    `root_certificates`) or `connection` (a SuperLink connection of your own Flower config, e.g. one
    set up with account login) says where to.
    """
    if (superlink is None) == (connection is None):
        raise ValueError("give either a SuperLink address (--superlink HOST:PORT) or a connection name "
                         "from your Flower config (--connection NAME), not both or neither")
    app_dir = write_app_dir(cfg, Path(app_dir or Path(cfg.output_dir) / "flower-app"))
    extra: dict[str, str] = {}
    tmp_home = None
    if superlink is not None:
        if not insecure and not root_certificates:
            raise ValueError("a SuperLink address needs --root-certificates CA.pem (TLS) or --insecure")
        tmp_home = Path(tempfile.mkdtemp(prefix="asymlora-flwr-home-"))
        flwr_home_for(superlink, insecure=insecure, root_certificates=root_certificates, home=tmp_home)
        extra["FLWR_HOME"] = str(tmp_home)
        connection = "asymlora"
    flwr = str(Path(sys.executable).parent / "flwr")
    env = flower_env(extra)
    cmd = [flwr, "run", str(app_dir), str(connection)]
    if stream:
        cmd.append("--stream")
    try:
        code, run_id = _run_passing_output(cmd, env, timeout)
        if code != 0:
            return code
        status = run_status(flwr, str(connection), run_id, env) if run_id else None
        if status is None:
            log.warning("could not read the run's status back from the SuperLink; trusting `flwr run`'s exit code")
            return code
        done = status == "finished:completed" if stream else status.rsplit(":", 1)[-1] not in ("failed", "stopped")
        if not done:
            log.error("Flower run %s ended %s", run_id, status)
        return 0 if done else RUN_FAILED
    finally:
        if tmp_home is not None:
            shutil.rmtree(tmp_home, ignore_errors=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STARTED = re.compile(r"started run (\d+)")


def _run_passing_output(cmd: list[str], env: dict[str, str], timeout: Optional[float]) -> tuple[int, Optional[str]]:
    """Run `flwr run`, its output passed through; (its exit code, the run id it printed)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    ids: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            found = _STARTED.search(_ANSI.sub("", line))
            if found:
                ids.append(found.group(1))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join(timeout=10)
    return code, (ids[0] if ids else None)


RUN_FAILED = 3  # the exit code of a deployment whose ServerApp failed or was stopped


def run_status(flwr: str, connection: str, run_id: str, env: dict[str, str]) -> Optional[str]:
    """The SuperLink's status of run `run_id` ("finished:completed", "running", ...), from `flwr ls
    --run-id --format json`; None when it cannot say. Colour is off: rich writes ANSI codes into JSON
    under FORCE_COLOR even through a pipe."""
    plain = {k: v for k, v in env.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    plain["NO_COLOR"] = "1"
    try:
        proc = subprocess.run([flwr, "ls", connection, "--run-id", run_id, "--format", "json"], env=plain,
                              capture_output=True, text=True, timeout=120, check=False)
        runs = json.loads(_ANSI.sub("", proc.stdout))["runs"]
        return next(str(r["status"]) for r in runs if str(r.get("run-id")) == run_id)
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return None
