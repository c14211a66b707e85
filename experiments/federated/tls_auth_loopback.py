"""Check the deployment recipe of docs/federated.md with TLS and SuperNode authentication, on
loopback: a CA and a SuperLink certificate (openssl), a SuperLink with --enable-supernode-auth,
two ECDSA P-384 SuperNode keys registered with `flwr supernode register`, two authenticated
SuperNodes over TLS, and `asymlora federate --engine deployment --root-certificates` for 2 rounds
of heterogeneous Fed-ALoRA on the tests' tiny model. Every process is started here and stopped by
its process group id. Run from the repository root:

    .venv/bin/python experiments/federated/tls_auth_loopback.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from asymlora.federated.flower.launch import flower_env, flwr_home_for, run_deployment  # noqa: E402
from tests.federated.runtime_helpers import free_port, make_model_dir, stop, tiny_config, wait_for_port  # noqa: E402


def sh(*cmd: str, env=None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def make_certs(d: Path) -> None:
    d.mkdir(parents=True)
    sh("openssl", "genrsa", "-out", str(d / "ca.key"), "2048")
    sh("openssl", "req", "-x509", "-new", "-nodes", "-key", str(d / "ca.key"), "-sha256", "-days", "2",
       "-subj", "/CN=asymlora-test-ca", "-out", str(d / "ca.crt"))
    sh("openssl", "genrsa", "-out", str(d / "server.key"), "2048")
    sh("openssl", "req", "-new", "-key", str(d / "server.key"), "-subj", "/CN=localhost", "-out", str(d / "server.csr"))
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
       "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(d / "san.ext"), "-out", str(d / "server.pem"))


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="asymlora-tls-"))
    certs, keys, home = root / "certs", root / "keys", root / "flwr-home"
    make_certs(certs)
    keys.mkdir()
    cfg = tiny_config(root, make_model_dir(root), "fedalora", [2, 1], max_local_steps=1, eval_every=2)
    env = flower_env({"OMP_NUM_THREADS": "1", "FLWR_HOME": str(home)})
    port = free_port()
    flwr_home_for(f"127.0.0.1:{port}", insecure=False, root_certificates=str(certs / "ca.crt"), home=home)
    bindir = Path(sys.executable).parent
    procs: list[subprocess.Popen] = []
    start = time.time()
    try:
        procs.append(subprocess.Popen(
            [str(bindir / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
             "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
             "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(port),
             "--disable-runtime-dependency-installation"],
            env=env, stdout=open(root / "superlink.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_port(port, procs[0])
        for i in range(2):
            sh("ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(keys / f"client{i}"))
            print(sh(str(bindir / "flwr"), "supernode", "register", str(keys / f"client{i}.pub"), "asymlora",
                     env=env).strip().splitlines()[-1])
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(bindir / "flower-supernode"), "--superlink", f"127.0.0.1:{port}",
                 "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key", str(keys / f"client{i}"),
                 "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", f"partition-id={i}"],
                env=env, stdout=open(root / f"supernode{i}.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        code = run_deployment(cfg, superlink=f"127.0.0.1:{port}", root_certificates=str(certs / "ca.crt"),
                              timeout=900)
    finally:
        stop(procs)
    results = json.loads((root / "out" / "results.json").read_text())
    print(f"flwr run exit code {code}; {time.time() - start:.0f}s; accepted per round "
          f"{[r['accepted'] for r in results['rounds']]}; Params.(M) sent {results['summary']['params_m_measured']} "
          f"= formula {results['summary']['params_m_formula']}; files in {root}")


if __name__ == "__main__":
    main()
