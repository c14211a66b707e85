"""SecAgg+ on a loopback deployment: one run without and one with `secagg: true`, on the same
SuperLink and SuperNodes (one per client, insecure, 127.0.0.1 only), then the server's aggregate of
each round compared between the two and SecAgg+'s overhead in time and bytes per round.

Every client trains the same examples from the same seed in both runs, so the two round-1
aggregates differ only by SecAgg+'s clipping and quantisation. Each run stops after round 1 (its
aggregate kept) and resumes to the last round, since the server keeps only the latest aggregate. A
comparison is only made where both runs aggregated the same clients: a client lost in either run
(a crash, e.g. the kernel's OOM killer when the machine cannot hold every ClientApp) stops the
script with a non-zero exit naming it. Run from the repository root:

    .venv/bin/python experiments/federated/secagg_loopback.py experiments/federated/cpu/secagg.yaml

Writes `results/secagg/{secagg.json,secagg.md}` and each run's results beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from asymlora.federated.config import FederatedConfig  # noqa: E402
from asymlora.federated.flower.launch import flower_env, run_deployment  # noqa: E402
from tests.federated.runtime_helpers import free_port, stop, wait_for_port  # noqa: E402


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def kept(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    """The server's aggregate after each round, by round."""
    state = load_file(str(run_dir / "server" / "server_state.safetensors"))
    rounds: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("kept::"):
            _, t, name = key.split("::", 2)
            rounds.setdefault(int(t), {})[name] = value.float()
    return rounds


def compare(plain: dict[str, torch.Tensor], secure: dict[str, torch.Tensor]) -> dict[str, float]:
    diff = max(float((plain[k] - secure[k]).abs().max()) for k in plain)
    scale = max(float(v.abs().max()) for v in plain.values())
    norm = sum(float(v.square().sum()) for v in plain.values()) ** 0.5
    dnorm = sum(float((plain[k] - secure[k]).square().sum()) for k in plain) ** 0.5
    return {"max_abs_diff": diff, "max_abs_value": scale, "relative_l2_diff": dnorm / norm if norm else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "federated" / "results" / "secagg"))
    ap.add_argument("--work", default=str(ROOT / "experiments" / "federated" / "runs" / "secagg"))
    args = ap.parse_args()
    base = FederatedConfig.from_yaml(args.config)
    work, out = Path(args.work), Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = flower_env({"OMP_NUM_THREADS": "1", "FLWR_HOME": str(work / "flwr-home")})
    bindir = Path(sys.executable).parent
    port = free_port()
    procs: list[subprocess.Popen] = []
    runs: dict[str, dict] = {}
    try:
        procs.append(start([str(bindir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                            "--disable-runtime-dependency-installation"], work / "superlink.log", env))
        wait_for_port(port, procs[0])
        for i in range(base.n_clients):
            procs.append(start([str(bindir / "flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--insecure",
                                "--host", "127.0.0.1", "--port", str(free_port()), "--node-config",
                                f"partition-id={i}"], work / f"supernode{i}.log", env))
        for name, secagg in (("plain", None), ("secagg", True)):
            runs[name] = run_twice(dataclasses.replace(base, output_dir=str(work / name), state_dir=None,
                                                       secagg=secagg), name, port, work)
    finally:
        stop(procs)
    lost = lost_clients(runs, base.n_clients)
    if lost:
        more = f"; and {len(lost) - 4} more" if len(lost) > 4 else ""
        raise SystemExit(f"secagg_loopback: not comparable, clients were lost ({'; '.join(lost[:4])}{more}); "
                         f"logs in {work} (a ClientApp killed for memory shows in `dmesg`)")
    report(base, runs, work, out)


def run_twice(cfg: FederatedConfig, name: str, port: int, work: Path) -> dict:
    """Round 1, its aggregate kept, then a resume to `cfg.rounds`: {seconds, results, kept by round}."""
    seconds, kept_rounds = 0.0, {}
    for rounds in sorted({1, cfg.rounds}):
        started = time.time()
        code = run_deployment(dataclasses.replace(cfg, rounds=rounds), superlink=f"127.0.0.1:{port}",
                              insecure=True, timeout=7200)
        seconds += time.time() - started
        if code != 0:
            raise SystemExit(f"secagg_loopback: the {name} run failed at round {rounds} (flwr exit code {code}); "
                             f"logs in {work}")
        kept_rounds.update(kept(Path(cfg.output_dir)))
    results = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    return {"seconds": round(seconds, 1), "results": results, "kept": kept_rounds}


def lost_clients(runs: dict[str, dict], n_clients: int) -> list[str]:
    """'<run> round t: client c (reason)' for every client not aggregated in a round of either run."""
    lost = []
    for name, run in runs.items():
        for record in run["results"]["rounds"]:
            reasons = {r["client"]: r["reason"] for r in record.get("rejected", [])}
            missing = sorted(set(range(n_clients)) - set(record.get("accepted", [])))
            lost += [f"{name} round {record['round']}: client {c} ({reasons.get(c, 'not aggregated')})"
                     for c in missing]
    return lost


def round_rows(runs: dict[str, dict]) -> list[dict]:
    rows = []
    for plain, secure in zip(runs["plain"]["results"]["rounds"], runs["secagg"]["results"]["rounds"]):
        sec = secure.get("secagg", {})
        rows.append({
            "round": plain["round"],
            "plain_upload_bytes": plain["comm"]["upload_bytes"], "plain_download_bytes": plain["comm"]["download_bytes"],
            "secagg_bytes_sent": sum(sec.get("bytes_sent", {}).values()),
            "secagg_bytes_received": sum(sec.get("bytes_received", {}).values()),
            "plain_seconds": plain.get("seconds"), "secagg_seconds": secure.get("seconds"),
            "accepted_plain": plain["accepted"], "accepted_secagg": secure["accepted"],
        })
    return rows


def report(base: FederatedConfig, runs: dict, work: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plain, secure = runs["plain"]["kept"], runs["secagg"]["kept"]
    agg = {t: compare(plain[t], secure[t]) for t in sorted(plain) if t in secure}
    rows = round_rows(runs)
    summary = {"config": base.to_dict() if hasattr(base, "to_dict") else str(base),
               "seconds": {k: v["seconds"] for k, v in runs.items()},
               "aggregate_difference_by_round": agg, "rounds": rows,
               "scores": {k: v["results"]["summary"]["avg"] for k, v in runs.items()}}
    (out / "secagg.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    for name in runs:
        shutil.copy(work / name / "results.json", out / f"{name}-results.json")
    lines = [f"SecAgg+ on a loopback deployment ({base.n_clients} SuperNodes, {base.method}, "
             f"{base.rounds} rounds): whole run {runs['plain']['seconds']} s without, {runs['secagg']['seconds']} s "
             f"with SecAgg+; average score {summary['scores']['plain']:.2f} without, "
             f"{summary['scores']['secagg']:.2f} with.", "",
             "| round | seconds without | seconds with SecAgg+ | aggregate max abs diff | largest aggregate value | "
             "relative L2 diff | bytes up+down without | bytes sent+received with SecAgg+ | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda d, k: f"{d[k]:.2e}" if k in d else "-"  # noqa: E731
    for row in rows:
        d = agg.get(row["round"], {})
        plain_bytes = row["plain_upload_bytes"] + row["plain_download_bytes"]
        sec_bytes = row["secagg_bytes_sent"] + row["secagg_bytes_received"]
        lines.append(f"| {row['round']} | {row['plain_seconds']:.1f} | {row['secagg_seconds']:.1f} | "
                     f"{fmt(d, 'max_abs_diff')} | {fmt(d, 'max_abs_value')} | {fmt(d, 'relative_l2_diff')} | "
                     f"{plain_bytes:,.0f} | {sec_bytes:,.0f} | {sec_bytes / plain_bytes:.2f} |")
    (out / "secagg.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
