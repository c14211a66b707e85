"""A tiny federated world on disk for the runtime tests: a random 2-layer Llama with an offline BPE
tokenizer saved as a model directory, and a FLAN-layout data folder with one task per client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from asymlora.federated.config import MOVED_KEYS, SECTION_TYPES, FederatedConfig

TASKS = ["reverse", "add", "upper", "copy"]


def records(task: str, n: int, offset: int = 0) -> list[dict[str, str]]:
    words = ["apple", "cat", "mat", "world", "hello", "sat", "the", "answer"]
    out = []
    for i in range(offset, offset + n):
        w = words[i % len(words)]
        if task == "reverse":
            instr, ans = f"Write the word backwards.\n{w}", w[::-1]
        elif task == "add":
            instr, ans = f"Add the two numbers.\n{i} + {i + 3}", str(2 * i + 3)
        elif task == "upper":
            instr, ans = f"Write the word in capitals.\n{w}", w.upper()
        else:
            instr, ans = f"Copy the word.\n{w}", w
        out.append({"instruction": instr, "output": ans, "task": task, "category": task})
    return out


def make_model_dir(root: Path) -> Path:
    """A saved random tiny Llama (vocab 320 >= the tokenizer's 300) and the offline tokenizer."""
    from asymlora.models import tiny_llama
    from tests.data.tiny_tokenizer import tiny_tokenizer

    path = root / "tiny-model"
    if not (path / "config.json").exists():
        model = tiny_llama(hidden=32, layers=2, vocab=320, heads=4, kv_heads=2, intermediate=64, seed=0)
        model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = 0, 1, 2
        model.save_pretrained(str(path), safe_serialization=True)
        tiny_tokenizer().save_pretrained(str(path))
    return path


def make_data_dir(root: Path, n_train: Sequence[int], n_test: int = 2) -> Path:
    """Client i: `n_train[i]` records of task TASKS[i % 4]; test.jsonl: `n_test` per task."""
    path = root / "data"
    path.mkdir(parents=True, exist_ok=True)
    test = []
    for i, n in enumerate(n_train):
        task = TASKS[i % len(TASKS)]
        (path / f"local_training_{i}.json").write_text(json.dumps(records(task, n)))
        if i < len(TASKS):
            test += records(task, n_test, offset=100)
    (path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return path


def tiny_config(root: Path, model_dir: Path, method: str, ranks: list[int], *,
                n_train: Optional[Sequence[int]] = None, **overrides: Any) -> FederatedConfig:
    """A run of tiny clients; `overrides` may name a section's key by its flat name (`lr`,
    `max_local_steps`, `targets`... see `MOVED_KEYS`) or by the section's (`training={...}`)."""
    n = overrides.get("num_clients") or len(ranks)
    data = make_data_dir(root, n_train or [4] * n)
    values: dict[str, Any] = dict(
        model=str(model_dir), data_dir=str(data), method=method, output_dir=str(root / "out"), ranks=ranks,
        d_m=3, rounds=2, max_eval_examples=1, progress=False, min_clients=1, device="cpu",
        adapter=dict(target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        training=dict(num_epochs=1.0, max_steps=2, batch_size=2, learning_rate=1e-2, cutoff_len=48, progress=False),
        evaluation=dict(max_new_tokens=2, batch_size=4),
    )
    for key, value in overrides.items():
        if key in MOVED_KEYS:
            section, name = MOVED_KEYS[key]
            values[section][name] = -1 if key == "max_local_steps" and value is None else value
        elif key in SECTION_TYPES:
            values[key].update(value)
        else:
            values[key] = value
    return FederatedConfig(**values)


def run_recording(cfg: FederatedConfig) -> tuple[dict[int, Any], dict[str, Any]]:
    """Run `cfg` with the in-process engine: (each client's last upload, the run's summary)."""
    from asymlora.federated.client import FederatedClient
    from asymlora.federated.engine import LocalEngine

    sent: dict[int, Any] = {}

    class Recording(FederatedClient):
        def fit(self, server_round):
            fit = super().fit(server_round)
            sent[self.client_id] = fit.upload
            return fit

    return sent, LocalEngine(cfg, client_factory=Recording).run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each started process group (its id is the PID we started), SIGKILL if needed."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
    deadline = time.monotonic() + 15
    for p in procs:  # helpers the SuperNodes spawned (flower-superexec, flwr-clientapp) go too
        while time.monotonic() < deadline:
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(p.pid, signal.SIGKILL)
