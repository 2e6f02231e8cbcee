"""Time training steps of the full-size PneumoLLM (CLIP ViT-L/14 + LLaMA-7B, random weights) and its memory.

Builds the paper's architecture from the built-in configs (no download: ``pretrained: false``) directly
on the device with frozen weights in bf16 and fp32 trainable parts, then times forward + backward +
AdamW steps under autocast on random films. Writes a JSON with the mean step time and
``torch.cuda.max_memory_allocated``.

    python benchmarks/train_step_full.py                       # GPU, full size
    python benchmarks/train_step_full.py --tiny --device cpu   # CPU smoke test with the tiny model
    python benchmarks/train_step_full.py token_engine.m=8      # any model override
    python benchmarks/train_step_full.py llm.quantization=nf4  # low-memory trunk (bitsandbytes)
    python benchmarks/train_step_full.py --compile             # torch.compile of the whole model

The loss is plain cross-entropy on random labels: the step's cost does not depend on which loss trains it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from pneumollm.models.param_count import (
    ParameterCounts,
    build_model,
    compose_model_config,
    trainable_breakdown,
)

FULL = {"encoder": "full_clip_vit_l14", "llm": "full_llama7b"}
TINY = {"encoder": "tiny_clip_vit_l14", "llm": "tiny_llama7b"}
GROUPS = ("encoder", "token_engine", "neck", "emitter", "llm", "head", "model")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="group choices (llm=none) or dotlist overrides")
    parser.add_argument("--tiny", action="store_true", help="tiny CLIP + tiny Llama (CPU smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--frozen-dtype", default=None,
                        help="frozen weights' dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--autocast", default=None, choices=["bfloat16", "float16", "none"],
                        help="autocast dtype (default: bfloat16 on CUDA, none on CPU)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up steps compile)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step_full.json"))
    return parser.parse_args(argv)


def model_config(args: argparse.Namespace, on_cuda: bool):
    picked = dict(TINY if args.tiny else FULL)
    dotlist = []
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key in GROUPS:
            picked[key] = value
        else:
            dotlist.append(item)
    frozen = args.frozen_dtype or ("bfloat16" if on_cuda or not args.tiny else "float32")
    base = compose_model_config(picked)
    fixed = []
    for group in ("encoder", "llm"):
        node = base[group]
        if "pretrained" in node:
            fixed.append(f"{group}.pretrained=false")
        if "frozen_dtype" in node:
            fixed.append(f"{group}.frozen_dtype={frozen}")
        if "attn_implementation" in node:
            fixed.append(f"{group}.attn_implementation={args.attn}")
    return picked, frozen, compose_model_config(picked, [*fixed, *dotlist])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON to ``--out`` and return its content."""
    args = parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    picked, frozen, cfg = model_config(args, on_cuda)
    autocast = args.autocast or ("bfloat16" if on_cuda else "none")

    start = time.perf_counter()
    model = build_model(cfg, device=device).train()
    if on_cuda:
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - start
    weights_bytes = torch.cuda.memory_allocated(device) if on_cuda else None
    if on_cuda:  # the peak then covers training only (building briefly holds the unused token embedding)
        torch.cuda.reset_peak_memory_stats(device)

    forward = torch.compile(model) if args.compile else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.02)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    images = torch.rand(args.batch_size, 1, args.image_size, args.image_size, device=device, generator=generator)
    labels = torch.randint(0, model.num_classes, (args.batch_size,), device=device, generator=generator)

    def step() -> float:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=getattr(torch, autocast, None), enabled=autocast != "none"):
            logits = forward(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimiser.step()
        return loss.item()  # synchronises

    for _ in range(args.warmup):
        step()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        if on_cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)

    counts = ParameterCounts.of(model)
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    result = {
        "benchmark": "train_step_full",
        "device": torch.cuda.get_device_name(device) if on_cuda else f"cpu ({platform.processor() or 'unknown'})",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "choices": picked,
        "overrides": list(args.overrides),
        "tiny": args.tiny,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "frozen_dtype": frozen,
        "autocast": autocast,
        "attn_implementation": args.attn,
        "compile": args.compile,
        "trainable_parameters": counts.trainable,
        "total_parameters": counts.total,
        "unused_embedding_parameters_dropped": counts.excluded,
        "trainable_by_part": trainable_breakdown(model),
        "build_seconds": build_s,
        "warmup_steps": args.warmup,
        "step_seconds": times,
        "mean_step_seconds": statistics.fmean(times) if times else None,
        "std_step_seconds": statistics.stdev(times) if len(times) > 1 else 0.0,
        "losses": losses,
        "weights_memory_bytes": weights_bytes,
        "max_memory_allocated_bytes": peak,
        "max_memory_allocated_gib": peak / 2**30 if peak is not None else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # Linux reports KiB
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    mean = result["mean_step_seconds"]
    memory = f", peak memory {result['max_memory_allocated_gib']:.2f} GiB" if peak is not None else ""
    print(f"{result['device']}: {len(times)} steps, mean {mean:.4f} s/step{memory} -> {args.out}")
    return result


if __name__ == "__main__":
    main()
