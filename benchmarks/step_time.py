"""Training-step time and peak memory: frozen-base floor, PEFT LoRA, our ALoRA and HydraLoRA.

A step is forward + backward + AdamW on a randomly initialised Llama (weights do not change the
cost). On a GPU the default shape is LLaMA-2-7B's layer shape cut to 4 layers, in bf16; on the CPU
a small shape in float32. Every figure is also given as a ratio to PEFT LoRA and to the floor
measured in the same run (a variant on a quantised base, `alora@nf4`, to `peft_lora@nf4`), so that
results from different machines can be compared. Adapters are built as `asymlora train` builds
them (`asymlora.get_peft_model` with the training default `adapter_dtype`).

    python benchmarks/step_time.py --device cuda            # 4 x 256 and 8 x 1024, d 4096
    python benchmarks/step_time.py --device cpu             # small shape, a few minutes on 2 cores
    python benchmarks/step_time.py --device cpu --variants peft_lora@nf4,alora@nf4 --shapes 2x64 \
        --out benchmarks/results/step_time-cpu-nf4.json    # a 4-bit base (bitsandbytes)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import peft
import torch
from tqdm import tqdm

import asymlora
from asymlora.models import bnb_config, tiny_llama
from asymlora.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"


def base_model(shape: dict, device: str, dtype: torch.dtype, quantization: str | None):
    model = tiny_llama(hidden=shape["hidden"], layers=shape["layers"], vocab=shape["vocab"],
                       heads=shape["heads"], kv_heads=shape["kv_heads"], intermediate=shape["ff"], dtype=dtype)
    if quantization is None:
        return model.to(device)
    import tempfile

    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:  # bitsandbytes quantises while loading a checkpoint
        model.save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, device_map={"": device},
                                                    quantization_config=bnb_config(quantization, dtype))


def build(variant: str, shape: dict, device: str, dtype: torch.dtype, targets: list[str]):
    method, _, quantization = variant.partition("@")
    model = base_model(shape, device, dtype, quantization or None)
    if method == "floor":
        model.requires_grad_(False)
        model.enable_input_require_grads()  # activations still need gradients: the backward pass runs
        return model, None
    config = {
        "peft_lora": lambda: peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets),
        "alora": lambda: asymlora.ALoRAConfig(r=8, lora_alpha=16, num_experts=3, target_modules=targets),
        "hydralora": lambda: asymlora.HydraLoRAConfig(r=8, lora_alpha=16, num_experts=3, target_modules=targets),
    }[method]()
    model = asymlora.get_peft_model(model, config, adapter_dtype=TrainConfig().adapter_dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed_step(model, optimizer, ids, device: str, clock=time.perf_counter) -> float:
    sync(device)
    start = clock()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return (clock() - start) * 1000


def row(variant: str, batch: int, seq: int, times: list[float], peak, steps: int) -> dict:
    return {"variant": variant, "batch": batch, "seq": seq, "median_ms": statistics.median(times),
            "p10_ms": sorted(times)[len(times) // 10], "peak_mem_gib": peak, "steps": steps}


def measure(variant: str, shape: dict, batch: int, seq: int, device: str, dtype: torch.dtype,
            targets: list[str], steps: int, warmup: int) -> dict:
    """One variant alone on the device, so that its peak memory is its own."""
    torch.manual_seed(0)
    model, optimizer = build(variant, shape, device, dtype, targets)
    model.train()
    ids = torch.randint(0, shape["vocab"], (batch, seq), device=device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = [timed_step(model, optimizer, ids, device) for _ in range(warmup + steps)][warmup:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    del model, optimizer
    return row(variant, batch, seq, times, peak, steps)


def measure_interleaved(variants: list[str], shape: dict, batch: int, seq: int, device: str,
                        dtype: torch.dtype, targets: list[str], steps: int, warmup: int,
                        clock=time.perf_counter) -> list[dict]:
    """All variants built side by side and stepped in turn (A B C D A B C D ...): on a shared CPU,
    a change in background load then hits every variant alike, and the ratios stay fair."""
    built = {}
    for v in variants:
        torch.manual_seed(0)
        model, optimizer = build(v, shape, device, dtype, targets)
        built[v] = (model.train(), optimizer)
    ids = torch.randint(0, shape["vocab"], (batch, seq), device=device)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in tqdm(range(warmup + steps), desc=f"{batch}x{seq} interleaved", file=sys.stderr):
        for v in variants:
            t = timed_step(*built[v], ids, device, clock)
            if i >= warmup:
                times[v].append(t)
    return [row(v, batch, seq, times[v], None, steps) for v in variants]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def add_ratios(rows: list[dict]) -> None:
    for row in rows:
        same = {r["variant"]: r for r in rows if (r["batch"], r["seq"]) == (row["batch"], row["seq"])}
        base = row["variant"][row["variant"].find("@"):] if "@" in row["variant"] else ""  # same base only
        for ref in ("peft_lora", "floor"):
            other = same.get(ref + base)
            if other is not None:
                row[f"time_vs_{ref}"] = row["median_ms"] / other["median_ms"]
                if row["peak_mem_gib"] and other["peak_mem_gib"]:
                    row[f"mem_vs_{ref}"] = row["peak_mem_gib"] / other["peak_mem_gib"]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Training step time: {meta['device']}", "",
             f"Model: random Llama, {meta['shape']}, {meta['dtype']}, targets {','.join(meta['targets'])}; "
             f"median of {meta['steps']} steps after {meta['warmup']} warm-up steps, {meta['timing']}. "
             f"Adapters in the dtype `asymlora train` gives them (adapter_dtype: {TrainConfig().adapter_dtype}); "
             "`@nf4`: a 4-bit base (bitsandbytes), compared with `peft_lora@nf4`.", "",
             "| variant | batch x seq | median ms | vs PEFT LoRA | vs floor | peak GiB | mem vs LoRA |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] else "n/a"
        mem = f"{r['mem_vs_peft_lora']:.3f}" if "mem_vs_peft_lora" in r else "n/a"
        lines.append(f"| {r['variant']} | {r['batch']} x {r['seq']} | {r['median_ms']:.1f} | "
                     f"{r.get('time_vs_peft_lora', float('nan')):.3f} | {r.get('time_vs_floor', float('nan')):.3f} "
                     f"| {peak} | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shapes", default=None, help="batch x seq list, e.g. 4x256,8x1024")
    parser.add_argument("--variants", default="floor,peft_lora,alora,hydralora")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="on the CPU: wall time, or this process's CPU time (steadier on a shared machine)")
    parser.add_argument("--sequential", action="store_true",
                        help="on the CPU, time variants one after another instead of interleaved")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        shape = dict(hidden=4096, layers=4, ff=11008, heads=32, kv_heads=32, vocab=32000)
        dtype, default_shapes, steps = torch.bfloat16, "4x256,8x1024", args.steps or 20
    else:
        shape = dict(hidden=512, layers=4, ff=1376, heads=8, kv_heads=8, vocab=8000)
        dtype, default_shapes, steps = torch.float32, "4x128", args.steps or 20
    targets = ["q_proj", "o_proj"]
    runs = [tuple(int(v) for v in s.split("x")) for s in (args.shapes or default_shapes).split(",")]
    variants = args.variants.split(",")
    rows = []
    for batch, seq in runs:
        if cuda or args.sequential:
            for variant in tqdm(variants, desc=f"{batch}x{seq}", file=sys.stderr):
                rows.append(measure(variant, shape, batch, seq, args.device, dtype, targets, steps, args.warmup))
        else:
            rows.extend(measure_interleaved(variants, shape, batch, seq, args.device, dtype, targets, steps,
                                            args.warmup, CLOCKS[args.clock]))
    add_ratios(rows)
    meta = {"device": device_name(args.device), "shape": shape, "dtype": str(dtype).replace("torch.", ""),
            "targets": targets, "steps": steps, "warmup": args.warmup, "torch": torch.__version__,
            "peft": peft.__version__,
            "timing": ("sequential" if cuda or args.sequential else "interleaved (variants stepped in turn)")
            + ("" if cuda or args.clock == "wall" else ", process CPU time")}
    tag = "cuda" if cuda else "cpu"
    out = Path(args.out) if args.out else RESULTS / f"step_time-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([dict(r, device=meta["device"], dtype=meta["dtype"], model_shape=shape,
                                     torch=meta["torch"], peft=meta["peft"]) for r in rows], indent=2))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
