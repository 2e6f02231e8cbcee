"""Peak host memory of building the frozen backbones, each build in a fresh process (``ru_maxrss``).

Builds (``--builds``): ``plain`` = the previous path (``_from_config`` with real tensors in the frozen dtype,
then the token embedding dropped), ``meta`` = ``load_or_build`` (meta device, embedding never built, each block
materialised and initialised in place), ``nf4`` / ``int8`` = ``meta`` with a quantised trunk, ``pretrained`` =
``load_or_build(pretrained=True)`` from a checkpoint saved first in bf16, ``pretrained_fp16`` the same from an
fp16 checkpoint (as most LLaMA-7B conversions are), converted to bf16 while loading. Each child imports
everything, resets its peak RSS (``/proc/self/clear_refs``, Linux), builds, and reports the peak above the RSS
before the build (and the process's ``ru_maxrss``, imports included); the script prints the per-layer slope
between the fewest and most layers to extrapolate to 32 (LLaMA-7B) or 24 (CLIP ViT-L/14) layers.

``measure`` starts each child with ``python -c WORKER`` (``worker``); the console script is
``pneumollm-build-memory`` (``pneumollm.cli.build_memory``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pneumollm.utils.markdown import markdown_table

PARTS = ("llama", "clip", "tiny_llama")  # tiny_llama: a smoke test of the script itself
BUILDS = ("plain", "meta", "nf4", "int8", "pretrained", "pretrained_fp16")
WORKER = "from pneumollm.models.build_memory import worker; worker()"  # a child process's program (python -c)


def plain_build(model_class: Any, config: Any, dtype: torch.dtype, attn_implementation: str,
                seed: int | None) -> torch.nn.Module:
    """The previous random build: real tensors created and initialised by ``_from_config`` under ``seed``."""
    from pneumollm.models.components.frozen import freeze, seeded

    with seeded(seed):
        return freeze(model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation))


def _spec(part: str) -> tuple[Any, Any, dict[str, Any], str, tuple[str, ...]]:
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaModel

    from pneumollm.models.components.encoders import CLIP_ARCHITECTURES
    from pneumollm.models.components.llm import LLAMA_ARCHITECTURES

    if part in ("llama", "tiny_llama"):
        return LlamaModel, LlamaConfig, LLAMA_ARCHITECTURES, "llama7b" if part == "llama" else "tiny", ("embed_tokens",)
    return CLIPVisionModel, CLIPVisionConfig, CLIP_ARCHITECTURES, "vit_l14", ()


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _child(build: str, part: str, layers: int, checkpoint: str | None) -> dict[str, Any]:
    """Run one build in this (fresh) process and report its peak RSS above the RSS before it."""
    from pneumollm.models.components.materialize import drop_submodules
    from pneumollm.models.components.pretrained import load_or_build
    from pneumollm.models.components.quantization import QuantSpec

    model_class, config_class, archs, arch, drop = _spec(part)
    overrides = {"num_hidden_layers": layers}
    quant = QuantSpec.parse(build) if build in ("nf4", "int8") else None
    if quant is not None:
        import bitsandbytes  # noqa: F401  (its import is not part of the build)
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    start = time.perf_counter()
    if build == "plain":
        model = plain_build(model_class, config_class(**{**archs[arch], **overrides}), torch.bfloat16, "sdpa", 0)
        drop_submodules(model, drop)
    else:
        model = load_or_build(model_class, config_class, archs, pretrained=build.startswith("pretrained"),
                              name_or_path=checkpoint, architecture=arch,
                              config_overrides=None if build.startswith("pretrained") else overrides,
                              frozen_dtype="bfloat16", attn_implementation="sdpa", init_seed=0, drop=drop,
                              quantization=quant).model
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM") - before
    with torch.no_grad():  # a pretrained load may map the checkpoint lazily: page every weight in
        for t in [*model.parameters(), *model.buffers()]:
            t.view(-1)[:: max(1, 4096 // max(1, t.element_size()))].float().sum()
    resident = _status_bytes("VmRSS") - before
    kept = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if quant is not None:  # quantisation constants hang off the weights
        kept += sum(v.numel() * v.element_size() for m in model.modules() for p in m.parameters(recurse=False)
                    if getattr(p, "quant_state", None) is not None
                    for v in p.quant_state.as_dict(packed=False).values() if torch.is_tensor(v))
        kept += sum(p.SCB.numel() * 4 for p in model.parameters() if getattr(p, "SCB", None) is not None)
    return {"build": build, "part": part, "layers": layers, "seconds": seconds, "tensor_bytes": kept,
            "rss_before_bytes": before, "peak_above_before_bytes": peak, "resident_after_reading_bytes": resident,
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _run_child(build: str, part: str, layers: int, checkpoint: str | None = None) -> dict[str, Any]:
    # A child's ru_maxrss starts at its parent's RSS (Linux keeps it across exec): the parent builds nothing.
    cmd = [sys.executable, "-c", WORKER, "--child", build, part, str(layers)]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _save_checkpoint_in_child(part: str, layers: int, folder: Path, dtype: str) -> str:
    target = folder / f"{part}{layers}{dtype}"
    cmd = [sys.executable, "-c", WORKER, "--save", part, str(layers), dtype, str(target)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return str(target)


def _save_checkpoint(part: str, layers: int, target: Path, dtype: str) -> None:
    from pneumollm.models.components.pretrained import load_or_build

    model_class, config_class, archs, arch, _ = _spec(part)
    model = load_or_build(model_class, config_class, archs, pretrained=False, name_or_path=None,
                          architecture=arch, config_overrides={"num_hidden_layers": layers},
                          frozen_dtype=dtype, attn_implementation="sdpa", init_seed=0).model
    model.save_pretrained(target)


def measure(parts: Sequence[str], builds: Sequence[str], layers: Sequence[int]) -> list[dict[str, Any]]:
    """The peak RSS of every (part, build, layers) above the RSS before it, each in a fresh process."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            for build in builds:
                for n in layers:
                    checkpoint = None
                    if build.startswith("pretrained"):
                        dtype = "float16" if build.endswith("fp16") else "bfloat16"
                        checkpoint = _save_checkpoint_in_child(part, n, Path(tmp), dtype)
                    rows.append(_run_child(build, part, n, checkpoint))
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows and, per (part, build), the per-layer slope between the fewest and most layers."""
    mib = lambda n: f"{n / 2**20:,.0f}"
    header = ["part", "build", "layers", "build's peak RSS MiB", "resident after reading every weight MiB",
              "tensors kept MiB", "process ru_maxrss MiB", "build s"]
    body = [[r["part"], r["build"], r["layers"], mib(r["peak_above_before_bytes"]),
             mib(r["resident_after_reading_bytes"]), mib(r["tensor_bytes"]), mib(r["ru_maxrss_bytes"]),
             f"{r['seconds']:.1f}"] for r in rows]
    slopes = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["part"], r["build"]), []).append(r)
    for (part, build), rs in groups.items():
        lo, hi = min(rs, key=lambda r: r["layers"]), max(rs, key=lambda r: r["layers"])
        if hi["layers"] == lo["layers"]:
            continue
        slope = (hi["peak_above_before_bytes"] - lo["peak_above_before_bytes"]) / (hi["layers"] - lo["layers"])
        fixed = lo["peak_above_before_bytes"] - slope * lo["layers"]
        slopes.append([part, build, mib(slope), mib(fixed)])
    return "\n".join([markdown_table(header, body, align=["left", "left"] + ["right"] * 6), "",
                      markdown_table(["part", "build", "per-layer peak MiB", "fixed part MiB"], slopes,
                                     align=["left", "left", "right", "right"])])


def worker(argv: Sequence[str] | None = None) -> None:
    """A child process of ``measure`` (``python -c WORKER ARGS``): ``--child BUILD PART LAYERS [--checkpoint DIR]``
    prints one build's row as JSON, ``--save PART LAYERS DTYPE FOLDER`` saves a random checkpoint to load."""
    parser = argparse.ArgumentParser(prog="build_memory worker")
    parser.add_argument("--child", nargs=3, metavar=("BUILD", "PART", "LAYERS"))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--save", nargs=4, metavar=("PART", "LAYERS", "DTYPE", "FOLDER"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.save:
        part, layers, dtype, folder = args.save
        _save_checkpoint(part, int(layers), Path(folder), dtype)
    elif args.child:
        build, part, layers = args.child
        print(json.dumps(_child(build, part, int(layers), args.checkpoint)))
    else:
        parser.error("give --child or --save")
