"""Training throughput (tokens/s) of `asymlora.train.train` on SmolLM2-135M's shape, plain vs fast path.

Runs the real training path (Transformers' Trainer, our collators and sampler) on a randomly
initialised Llama with SmolLM2-135M's config (weights do not change the cost of a step). Paths:

- plain: right-padded batches, the model's own loss (logits at every position);
- fast: `packing=True` (each batch's examples packed into rows of `--seq` tokens, no attention across
  examples) and `loss_chunk_size` (logits only where there are labels, 4096 tokens at a time).

Data: `synthetic` (every example cut to exactly `--seq` tokens, labels on nearly all of them: the
issue's 64 x 512 set-up, where packing cannot help) or a FLAN folder (`--data ../shared/data/flan8-crossdomain`:
real lengths, loss on the response only). tokens/s counts real (non-padding) tokens: the mean tokens
per example of the data x batch / median step time, timed over the steps after the warm-up.
Every row also has the first losses, so that the fast path can be seen to follow the plain one
(with dropout 0, the two are the same computation up to float rounding).

    python benchmarks/throughput.py --device cpu --batch 4 --seq 256 --steps 4 --data ../shared/data/flan8-crossdomain
    python benchmarks/throughput.py --device cuda --batch 64 --seq 512 --steps 30 --compile
    python benchmarks/throughput.py --device cuda --batch 64 --seq 512 --compile --compile-paths fast

Writes benchmarks/results/throughput-<device>-<data>.json and .md (rewritten after every row); ratios
are against PEFT LoRA on the plain eager path measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from asymlora.data.records import Example, load_task_dir
from asymlora.data.tokenize import tokenize_examples

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True)
PATHS = {"plain": {}, "fast": {"packing": True, "loss_chunk_size": 4096}}


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._t)


def synthetic_examples(n: int, seq: int, seed: int) -> list[Example]:
    """A short prompt and a response long enough that every example is cut to exactly `seq` tokens,
    nearly all of them labelled: the case where neither packing nor label-only logits can save much."""
    g = torch.Generator().manual_seed(seed)
    words = lambda k: " ".join(str(int(x)) for x in torch.randint(0, 10 ** 6, (k,), generator=g))  # noqa: E731
    return [Example(f"bench/{i}", f"t{i % 4}", words(2), "", words(seq)) for i in range(n)]


def run(variant: str, path: str, compile_: bool, examples: list[Example], batch: int, seq: int, steps: int,
        warmup: int, device: str, tokenizer, tokens_per_example: float,
        layers: int = SMOLLM2["num_hidden_layers"]) -> dict:
    from asymlora.train import train
    from asymlora.train.config import TrainConfig

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = LlamaForCausalLM(LlamaConfig(**{**SMOLLM2, "num_hidden_layers": layers})).to(dtype).to(device)
    config = TrainConfig(max_steps=warmup + steps, batch_size=batch, grad_accum=1, cutoff_len=seq,
                         learning_rate=1e-4, logging_steps=1, save_steps=10 ** 6, progress=False,
                         torch_compile=compile_, template="alpaca_short", **PATHS[path])
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        res = train(model, tokenizer, examples, variant, Path(tmp) / variant, config=config, callbacks=[timer],
                    adapter={"target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0})
        losses = [h["loss"] for h in res.log_history if "loss" in h]
    timed = timer.times[warmup:] if len(timer.times) > warmup else timer.times
    del res, model
    med = statistics.median(timed)
    return {"variant": variant, "path": path, "compile": compile_, "batch": batch, "seq": seq,
            "steps_timed": len(timed), "median_step_ms": round(med * 1000, 1),
            "tokens_per_s": round(batch * tokens_per_example / med, 1),
            "first_losses": [round(x, 4) for x in losses[:3]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128, help="cut-off length (and packed row length)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default="lora,alora,hydralora")
    ap.add_argument("--paths", default="plain,fast")
    ap.add_argument("--data", default="synthetic", help="'synthetic' or a FLAN-layout folder")
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    ap.add_argument("--compile-paths", default=None,
                    help="with --compile, the paths that get a compiled row (default: every path); "
                         "compiling costs a minute or more per row on a GPU machine")
    ap.add_argument("--layers", type=int, default=SMOLLM2["num_hidden_layers"],
                    help="decoder layers (SmolLM2-135M has 30; fewer for a quick check of the code paths)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure every row this many times, in turn, and keep the fastest (shared machines)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from asymlora.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    n = args.batch * (args.warmup + args.steps)
    if args.data == "synthetic":
        examples, data_tag = synthetic_examples(n, args.seq, 0), "synthetic"
    else:
        pool = load_task_dir(args.data, "train")
        g = torch.Generator().manual_seed(0)
        examples = [pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:n]]
        data_tag = Path(args.data).name
    feats, _ = tokenize_examples(examples, tokenizer, "alpaca_short", args.seq)
    tokens_per_example = sum(len(f["input_ids"]) for f in feats) / len(feats)
    labelled = sum(sum(x != -100 for x in f["labels"]) for f in feats) / sum(len(f["input_ids"]) for f in feats)
    print(f"{data_tag}: {tokens_per_example:.1f} tokens per example (cut-off {args.seq}), "
          f"{100 * labelled:.0f}% of them with a label")

    device = (torch.cuda.get_device_name() if args.device == "cuda"
              else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    tag = f"{'cuda' if args.device == 'cuda' else 'cpu'}-{data_tag}"
    meta = {"device": device, "data": args.data, "repeats": args.repeats, "layers": args.layers,
            "tokens_per_example": round(tokens_per_example, 1),
            "labelled_fraction": round(labelled, 3), "torch": torch.__version__}
    header = (f"Training throughput through asymlora.train (Trainer), SmolLM2-135M shape (random weights, "
              f"{args.layers} layers), q_proj+v_proj, {device}, data {data_tag} ({tokens_per_example:.0f} tokens "
              f"per example, {100 * labelled:.0f}% labelled), torch {torch.__version__}, fastest of {args.repeats} "
              "run(s) per row")
    compile_paths = set((args.compile_paths or args.paths).split(","))
    best: dict[tuple, dict] = {}
    table = ""
    for _ in range(args.repeats):  # in turn, so that a burst of background load hits every row alike
        for compile_ in ([False, True] if args.compile else [False]):
            for v in args.variants.split(","):
                for path in args.paths.split(","):
                    if compile_ and path not in compile_paths:
                        continue
                    row = run(v, path, compile_, examples, args.batch, args.seq, args.steps, args.warmup,
                              args.device, tokenizer, tokens_per_example, args.layers)
                    print(json.dumps(row), flush=True)
                    key = (compile_, v, path)
                    if key not in best or row["median_step_ms"] < best[key]["median_step_ms"]:
                        best[key] = row
                    # after every row: a run stopped at a deadline keeps the rows it measured
                    table = write_results(list(best.values()), Path(args.out), tag, meta, header)
    print(table)


def write_results(rows: list[dict], out: Path, tag: str, meta: dict, header: str) -> str:
    """throughput-<tag>.json and .md, with each row's ratio to LoRA plain eager when that row is there."""
    ref = next((r for r in rows if r["variant"] == "lora" and r["path"] == "plain" and not r["compile"]), None)
    for r in rows:
        r["vs_lora_plain_eager"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 3) if ref else None
    out.mkdir(parents=True, exist_ok=True)
    (out / f"throughput-{tag}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [header, "",
             "| variant | path | compile | batch x cut-off | median step (ms) | tokens/s | vs LoRA plain eager | first losses |",
             "|---|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['variant']} | {r['path']} | {r['compile']} | {r['batch']} x {r['seq']} | {r['median_step_ms']} | "
              f"{r['tokens_per_s']} | {r['vs_lora_plain_eager']} | {', '.join(map(str, r['first_losses']))} |"
              for r in rows]
    (out / f"throughput-{tag}.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
