"""One federated client's local training against `asymlora train`, plain vs fast path (tokens/s).

A FedIT client (rank 8 on q_proj and v_proj, dropout 0) trains one round on the first examples of
a real flan8-federated client file (`local_training_0.json`), through `FederatedClient.fit`; the
same examples, in the same order, from the same initial adapter and for the same steps go through
`asymlora.train.train`. Both run on a randomly initialised Llama with SmolLM2-135M's config (weights
do not change the cost of a step) and SmolLM2's tokenizer. Paths:

- plain: right-padded batches, the model's own loss over every position;
- fast: `packing` (each batch's examples in rows of the cut-off length, no attention across them)
  and `loss_chunk_size` 4096 (logits only where there are labels).

tokens/s counts real (non-padding) tokens: mean tokens per example x batch / median step time,
timed by a Trainer callback over the steps after the warm-up. Rows are measured in turn, repeated,
and the fastest of each kept: the machine is shared. Every row has its first losses: the client and
`asymlora train` follow one curve, and the fast path follows the plain one up to float rounding.

    python benchmarks/federated_round.py --device cpu --batch 8 --seq 256 --steps 3 --warmup 1 --repeats 3

Writes benchmarks/results/federated_round-<device>.json and .md; ratios are against the federated
client's plain path measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from throughput import SMOLLM2, StepTimer  # benchmarks/throughput.py, beside this script
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
PATHS = {False: {}, True: {"packing": True, "loss_chunk_size": 4096}}
RANK, TARGETS = 8, ["q_proj", "v_proj"]


class LoadState(TrainerCallback):
    """Gives `train()`'s adapter the client's initial one before the first step."""

    def __init__(self, state) -> None:
        self.state = state

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from asymlora.federated.client import load_adapter_state

        load_adapter_state(model, self.state)
        return control


def config(data_dir: Path, out: Path, fast: bool, args: argparse.Namespace):
    from asymlora.federated.config import FederatedConfig

    return FederatedConfig(
        model="smollm2-135m (random weights)", data_dir=str(data_dir), method="fedit", output_dir=str(out),
        ranks=[RANK], num_clients=8, rounds=1, max_train_examples=args.batch * (args.warmup + args.steps),
        progress=False, device=args.device, adapter={"target_modules": TARGETS, "lora_dropout": 0.0},
        training={"max_steps": args.warmup + args.steps, "batch_size": args.batch, "cutoff_len": args.seq,
                  "learning_rate": 1e-4, "progress": False, **PATHS[fast]})


def timed(fn, timer: StepTimer):
    """`fn` with the step timer added to every `fit_features` call it makes."""
    import asymlora.federated.local_training as local_training

    original = local_training.fit_features

    def with_timer(*a, **k):
        k["callbacks"] = [*k.get("callbacks", ()), timer]
        return original(*a, **k)

    local_training.fit_features = with_timer
    try:
        return fn()
    finally:
        local_training.fit_features = original


def run(path: str, fast: bool, base: torch.nn.Module, tokenizer, data_dir: Path, args, tokens_per_example) -> dict:
    from asymlora.federated.client import FederatedClient, mix_seed
    from asymlora.federated.local_training import trainer_seed
    from asymlora.train import train

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(data_dir, Path(tmp) / "fed", fast, args)
        client = FederatedClient(cfg, 0, base=lambda: (copy.deepcopy(base), tokenizer))
        if path == "federated":
            timed(lambda: client.fit(1), timer)
            log = client.last_train_stats[0].log_history
        else:
            training = cfg.training.replace(seed=trainer_seed(mix_seed(mix_seed(cfg.seed, 0, 1), 10)))
            result = train(copy.deepcopy(base), tokenizer, client.examples()[0], "lora", Path(tmp) / "train",
                           config=training, callbacks=[LoadState(client.state), timer],
                           adapter={"r": RANK, "lora_alpha": 2 * RANK, "lora_dropout": 0.0, "target_modules": TARGETS})
            log = result.log_history
        client.release()
    losses = [h["loss"] for h in log if "loss" in h]
    steps = timer.times[args.warmup:] if len(timer.times) > args.warmup else timer.times
    med = statistics.median(steps)
    return {"path": path, "fast": fast, "batch": args.batch, "seq": args.seq, "steps_timed": len(steps),
            "median_step_ms": round(med * 1000, 1), "tokens_per_s": round(args.batch * tokens_per_example / med, 1),
            "first_losses": [round(x, 4) for x in losses[:3]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256, help="cut-off length (and packed row length)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="rows measured in turn this many times; fastest kept")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "flan8-federated"))
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from asymlora.data.records import load_examples
    from asymlora.data.tokenize import tokenize_examples
    from asymlora.models import resolve

    data_dir = Path(args.data)
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    examples = load_examples(data_dir / "local_training_0.json")[:args.batch * (args.warmup + args.steps)]
    feats, _ = tokenize_examples(examples, tokenizer, "alpaca_short", args.seq)
    tokens_per_example = sum(len(f["input_ids"]) for f in feats) / len(feats)
    labelled = sum(sum(x != -100 for x in f["labels"]) for f in feats) / sum(len(f["input_ids"]) for f in feats)
    print(f"{data_dir.name}/local_training_0.json: {tokens_per_example:.1f} tokens per example "
          f"(cut-off {args.seq}), {100 * labelled:.0f}% of them with a label")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    base = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).to(dtype).to(args.device).eval()
    for p in base.parameters():
        p.requires_grad_(False)

    best: dict[tuple, dict] = {}
    for _ in range(args.repeats):  # in turn, so that a burst of background load hits every row alike
        for path in ("federated", "train"):
            for fast in (False, True):
                row = run(path, fast, base, tokenizer, data_dir, args, tokens_per_example)
                print(json.dumps(row), flush=True)
                key = (path, fast)
                if key not in best or row["median_step_ms"] < best[key]["median_step_ms"]:
                    best[key] = row
    rows = list(best.values())
    ref = best[("federated", False)]["tokens_per_s"]
    for r in rows:
        r["vs_federated_plain"] = round(r["tokens_per_s"] / ref, 3)
    fed_fast, train_fast = best[("federated", True)]["tokens_per_s"], best[("train", True)]["tokens_per_s"]
    device = (torch.cuda.get_device_name() if args.device == "cuda"
              else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    summary = {"federated_fast_vs_plain": round(fed_fast / ref, 3),
               "federated_fast_vs_train_fast": round(fed_fast / train_fast, 3)}
    meta = {"device": device, "data": f"{data_dir.name}/local_training_0.json", "repeats": args.repeats,
            "tokens_per_example": round(tokens_per_example, 1), "labelled_fraction": round(labelled, 3),
            "torch": torch.__version__, **summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if args.device == "cuda" else "cpu"
    (out / f"federated_round-{tag}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [f"One client's local training, SmolLM2-135M shape (random weights), FedIT rank {RANK} on "
             f"q_proj+v_proj, {device}, {meta['data']} ({tokens_per_example:.0f} tokens per example, "
             f"{100 * labelled:.0f}% labelled), torch {torch.__version__}, rows measured in turn, fastest of "
             f"{args.repeats} per row. Federated fast path: {summary['federated_fast_vs_plain']}x its plain path, "
             f"{summary['federated_fast_vs_train_fast']}x asymlora train's fast path.", "",
             "| path | fast | batch x cut-off | median step (ms) | tokens/s | vs federated plain | first losses |",
             "|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['path']} | {r['fast']} | {r['batch']} x {r['seq']} | {r['median_step_ms']} | {r['tokens_per_s']} | "
              f"{r['vs_federated_plain']} | {', '.join(map(str, r['first_losses']))} |" for r in rows]
    (out / f"federated_round-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
