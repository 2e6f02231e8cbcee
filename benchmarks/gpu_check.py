"""Full-size training steps on one GPU, several variants from one build, each written as JSON when it ends.

Variants (``--variants``, in order): ``bf16`` (frozen weights bf16, sdpa attention, bf16 autocast),
``grad_ckpt`` (the same with gradient checkpointing in the encoder and the trunk), ``compile``
(``torch.compile`` of the whole model; the warm-up steps include the compilation), ``nf4`` and ``int8`` (the
trunk rebuilt quantised with bitsandbytes, adapters in front of the quantised projections). Each records the
mean step time over ``--steps`` timed steps after ``--warmup`` steps at batch ``--batch-size`` and
``torch.cuda.max_memory_allocated`` (weights included). Used by ``benchmarks/gpu_check.sh``; ``--tiny`` runs the
same code with the tiny models (a CPU dry run).

    .venv/bin/python benchmarks/gpu_check.py --out /tmp/gpu_check --variants bf16,grad_ckpt,nf4,int8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from pneumollm.models.components.frozen import enable_gradient_checkpointing
from pneumollm.models.param_count import ParameterCounts, build_model, compose_model_config

VARIANTS = ("bf16", "grad_ckpt", "compile", "nf4", "int8")
# One full-size step (batch 16): CLIP ViT-L/14 forward + backward through the adapters (~2 x 156 GFLOP per
# film) and LLaMA-7B forward + backward on 10 tokens (~2 x 130 GFLOP per film): about 9.5 TFLOP.
STEP_TFLOP_BATCH16 = 9.5


def _config(tiny: bool, quantization: str | None = None):
    choices = ({"encoder": "tiny_clip_vit_l14", "llm": "tiny_llama7b"} if tiny
               else {"encoder": "full_clip_vit_l14", "llm": "full_llama7b"})
    overrides = ["encoder.pretrained=false", "llm.pretrained=false"]
    if not tiny:
        overrides += ["encoder.frozen_dtype=bfloat16", "llm.frozen_dtype=bfloat16"]
    if quantization:
        overrides.append(f"llm.quantization={quantization}")
    return compose_model_config(choices, overrides)


def _timed_steps(model: torch.nn.Module, forward: Any, device: torch.device, batch: int, steps: int,
                 warmup: int, autocast: bool) -> dict[str, Any]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.02)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 1, 224, 224, device=device, generator=generator)
    labels = torch.randint(0, 2, (batch,), device=device, generator=generator)

    def step() -> float:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = forward(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimiser.step()
        return loss.item()

    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if on_cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    mean = statistics.fmean(times)
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    return {"step_seconds": times, "mean_step_seconds": mean, "warmup_seconds": warmup_s,
            "achieved_tflops": STEP_TFLOP_BATCH16 * batch / 16 / mean, "max_memory_allocated_bytes": peak,
            "max_memory_allocated_gib": peak / 2**30 if peak is not None else None,
            "trainable_parameters": sum(p.numel() for p in trainable),
            "total_parameters": ParameterCounts.of(model).total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for <variant>.json")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny models (a dry run of this script on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    autocast = device.type == "cuda" or not args.tiny
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {VARIANTS}")
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "batch_size": args.batch_size, "tiny": args.tiny}

    model = None
    build_seconds = None
    for variant in variants:
        record: dict[str, Any] = {"variant": variant, **info}
        try:
            quantized = variant in ("nf4", "int8")
            if model is None or quantized:
                model = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                t0 = time.perf_counter()
                model = build_model(_config(args.tiny, variant if quantized else None), device=device).train()
                build_seconds = time.perf_counter() - t0
                record["build_seconds"] = build_seconds
            forward = model
            if variant == "grad_ckpt":
                for tower in (model.encoder.model, model.llm.model):
                    enable_gradient_checkpointing(tower)
            if variant == "compile":
                forward = torch.compile(model)
            record.update(_timed_steps(model, forward, device, args.batch_size, args.steps, args.warmup, autocast))
            if variant == "grad_ckpt":
                for tower in (model.encoder.model, model.llm.model):
                    tower.gradient_checkpointing_disable()
            record["status"] = "ok"
        except Exception as err:  # one variant failing must not hide the others
            record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        (args.out / f"{variant}.json").write_text(json.dumps(record, indent=2) + "\n")
        summary = (f"{record['mean_step_seconds']:.3f} s/step" if record["status"] == "ok" else record["error"])
        print(f"{variant}: {summary}", flush=True)


if __name__ == "__main__":
    main()
