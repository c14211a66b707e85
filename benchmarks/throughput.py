"""Training throughput (tokens/s) of `asymlora.train.train` on SmolLM2-135M's shape.

Runs the real training path (Transformers' Trainer, our collator and sampler) on a randomly
initialised Llama with SmolLM2-135M's config (weights do not change the cost of a step), with
full-length random sequences so that every position is a token. Timed over the optimiser steps after
the warm-up, by a callback around each step. Variants: PEFT LoRA r=16 and our ALoRA / HydraLoRA
(n=3, r=8), targets q_proj,v_proj, eager or `torch.compile`.

    python benchmarks/throughput.py --device cpu --batch 2 --seq 128 --steps 6
    python benchmarks/throughput.py --device cuda --batch 64 --seq 512 --steps 30 --compile

Writes benchmarks/results/throughput-<device>.json (rows: variant, compile, batch, seq, tokens_per_s,
median_step_ms, final_loss) and a Markdown table beside it.
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

from asymlora.data.records import Example

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True)


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


def _examples(n: int, seq: int, seed: int) -> list[Example]:
    """Texts long enough that every example is cut to exactly `seq` tokens."""
    g = torch.Generator().manual_seed(seed)
    words = lambda k: " ".join(str(int(x)) for x in torch.randint(0, 10 ** 6, (k,), generator=g))  # noqa: E731
    return [Example(f"bench/{i}", f"t{i % 4}", words(seq // 8), "", words(seq)) for i in range(n)]


def run(variant: str, compile_: bool, batch: int, seq: int, steps: int, warmup: int, device: str,
        tokenizer) -> dict:
    from asymlora.train import train
    from asymlora.train.config import TrainConfig

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).to(dtype).to(device)
    config = TrainConfig(max_steps=warmup + steps, batch_size=batch, grad_accum=1, cutoff_len=seq,
                         learning_rate=1e-4, logging_steps=1, save_steps=10 ** 6, progress=False,
                         torch_compile=compile_, template="alpaca_short")
    timer = StepTimer()
    examples = _examples(batch * (warmup + steps), seq, 0)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(model, tokenizer, examples, variant, Path(tmp) / variant, config=config, callbacks=[timer],
                    adapter={"target_modules": ["q_proj", "v_proj"]})
        losses = [h["loss"] for h in res.log_history if "loss" in h]
    timed = timer.times[warmup:] if len(timer.times) > warmup else timer.times
    del res
    med = statistics.median(timed)
    return {"variant": variant, "compile": compile_, "batch": batch, "seq": seq, "steps_timed": len(timed),
            "median_step_ms": round(med * 1000, 1), "tokens_per_s": round(batch * seq / med, 1),
            "final_loss": round(losses[-1], 4) if losses else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default="lora,alora,hydralora")
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from asymlora.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    rows = []
    for compile_ in ([False, True] if args.compile else [False]):
        for v in args.variants.split(","):
            row = run(v, compile_, args.batch, args.seq, args.steps, args.warmup, args.device, tokenizer)
            print(json.dumps(row))
            rows.append(row)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if args.device == "cuda" else "cpu"
    (out / f"throughput-{tag}.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    lines = [f"Training throughput through asymlora.train (Trainer), SmolLM2-135M shape, q_proj+v_proj, {device}", "",
             "| variant | compile | batch x seq | median step (ms) | tokens/s |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['variant']} | {r['compile']} | {r['batch']} x {r['seq']} | {r['median_step_ms']} | {r['tokens_per_s']} |"
              for r in rows]
    (out / f"throughput-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
