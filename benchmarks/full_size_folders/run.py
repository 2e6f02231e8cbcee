"""Full size from real weight folders on the CPU: load, train, predict, export.

Writes random weights in the layout of the two public folders the paper's model loads, then runs the suite's
own commands on them exactly as a user with downloaded weights would:

- ``clip-vit-large-patch14/``: a whole ``CLIPModel`` (vision and text towers, projections, ``logit_scale``) with
  the configuration of ``openai/clip-vit-large-patch14``, one fp32 ``model.safetensors`` (1.7 GB), as on the hub;
- ``llama-7b/``: ``LlamaForCausalLM`` with the configuration of ``huggyllama/llama-7b`` (token embedding and
  ``lm_head`` included), fp16, sharded safetensors with ``model.safetensors.index.json`` (13.5 GB). The shards
  are written tensor by tensor, so writing never holds more than one shard.

Then ``pneumollm-train size=full trainer=cpu encoder.name_or_path=... llm.name_or_path=...`` (``pretrained: true``,
the real ``from_pretrained`` path, frozen weights converted to bf16 while loading) on the demo cohort, fold 0,
with a few training batches; ``pneumollm-predict`` on the run folder (a second load of both folders, adapters
folded); ``pneumollm-export`` of the arm. Records load seconds, peak RSS of each process and seconds per step.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/full_size_folders/run.py \
        --out benchmarks/full_size_folders/results.json
    .venv/bin/python benchmarks/full_size_folders/run.py --tiny --out /tmp/tiny.json   # the same steps, tiny sizes

``--weights DIR`` keeps the written folders (13.5 + 1.7 GB) for reuse; by default they go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# openai/clip-vit-large-patch14's text tower and joint space (its vision tower is the suite's CLIP_VIT_L14_VISION)
CLIP_L14_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "vocab_size": 64, "max_position_embeddings": 16, "hidden_act": "quick_gelu"}
SHARD_BYTES = 2 * 2**30


def write_clip_folder(folder: Path, tiny: bool) -> None:
    """A whole CLIPModel in openai/clip-vit-large-patch14's layout (fp32, one model.safetensors)."""
    from pneumollm.models.components.encoders import CLIP_VIT_L14_VISION
    from pneumollm.models.tiny import TINY_CLIP_VISION

    vision = TINY_CLIP_VISION if tiny else CLIP_VIT_L14_VISION
    config = CLIPConfig(vision_config=vision, text_config=TINY_TEXT if tiny else CLIP_L14_TEXT,
                        projection_dim=vision["projection_dim"])
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)


def write_llama_folder(folder: Path, tiny: bool) -> None:
    """LlamaForCausalLM in huggyllama/llama-7b's layout: fp16, sharded safetensors with an index; every tensor
    drawn in turn (norms 1, the rest N(0, 0.02)), a shard written as soon as it is full."""
    from pneumollm.models.components.llm import LLAMA_7B
    from pneumollm.models.tiny import TINY_LLAMA

    config = LlamaConfig(**(TINY_LLAMA if tiny else LLAMA_7B), tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config.torch_dtype = "float16"
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(2)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    files: list[tuple[str, list[str]]] = []

    def flush(last: bool) -> None:
        name = f"part-{len(files) + 1:05d}.safetensors"
        save_file(shards[-1], str(folder / name), metadata={"format": "pt"})
        files.append((name, list(shards[-1])))
        shards[-1] = {}
        sizes[-1] = 0

    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=torch.float16)
        else:
            tensor = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=generator).half()
        if sizes[-1] and sizes[-1] + tensor.nbytes > SHARD_BYTES:
            flush(last=False)
        shards[-1][key] = tensor
        sizes[-1] += tensor.nbytes
    flush(last=True)
    weight_map, total = {}, 0
    for i, (name, keys) in enumerate(files, start=1):
        final = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        (folder / name).rename(folder / final)
        total += (folder / final).stat().st_size
        weight_map.update(dict.fromkeys(keys, final))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(folder)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _rss_gib(pid: int) -> dict[str, float]:
    """A running process's resident memory (Linux /proc): anonymous (what it allocated) and file-backed (pages of
    files it maps, such as the memory-mapped checkpoint while it loads: page cache the kernel can reclaim)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 2**20
    except (OSError, ValueError):
        pass
    return out


def timed(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> dict:
    """Run a command; its wall seconds, exit status, peak RSS (ru_maxrss, from wait4) and the peaks of its
    anonymous and file-backed resident memory (polled every 0.2 s)."""
    started = time.perf_counter()
    peaks = {"RssAnon": 0.0, "RssFile": 0.0}
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        while True:  # wait4 gives this child's own rusage (its ru_maxrss)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            for key, value in _rss_gib(proc.pid).items():
                peaks[key] = max(peaks[key], value)
            time.sleep(0.2)
    return {"seconds": round(time.perf_counter() - started, 1), "status": os.waitstatus_to_exitcode(status),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "peak_anon_gib": round(peaks["RssAnon"], 2),
            "peak_file_backed_gib": round(peaks["RssFile"], 2), "command": " ".join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny architectures in the same layouts (a dry run)")
    parser.add_argument("--weights", type=Path, default=None, help="where to write (or find) the weight folders")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--train-batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/full_size_folders/results.json")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="full_size_folders-"))
    work.mkdir(parents=True, exist_ok=True)
    weights = args.weights or work / "weights"
    clip_dir, llama_dir = weights / "clip-vit-large-patch14", weights / "llama-7b"
    result: dict = {"benchmark": "full_size_folders", "tiny": args.tiny, "machine": platform.processor(),
                    "cpu_count": os.cpu_count(), "cpu_threads": args.threads, "torch": torch.__version__,
                    "memory_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    started = time.perf_counter()
    if not (clip_dir / "config.json").is_file():
        write_clip_folder(clip_dir, args.tiny)
    if not (llama_dir / "config.json").is_file():
        write_llama_folder(llama_dir, args.tiny)
    result["write_seconds"] = round(time.perf_counter() - started, 1)
    result["folder_bytes"] = {"clip": folder_bytes(clip_dir), "llama": folder_bytes(llama_dir)}
    result["llama_shards"] = len(list(llama_dir.glob("model-*.safetensors")))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    run_dir = work / "study" / "pneumollm" / "fold0"
    size = (["encoder=full_clip_vit_l14", "llm=full_llama7b", "trainer=cpu", "encoder.multiscale=1"] if args.tiny
            else ["size=full", "trainer=cpu"])
    train = [str(BIN / "pneumollm-train"), *size, f"encoder.name_or_path={clip_dir}",
             f"llm.name_or_path={llama_dir}", "data.fold=0", f"data.batch_size={args.batch_size}",
             f"data.eval_batch_size={args.batch_size}", "data.progress=false", "trainer.max_epochs=1",
             f"+trainer.limit_train_batches={args.train_batches}", "logger=csv", "callbacks.progress=null",
             f"paths.root_dir={work}", f"paths.data_dir={work / 'data'}", f"hydra.run.dir={run_dir}",
             f"+callbacks.step_timer={{_target_: pneumollm.training.callbacks.StepTimer, "
             f"path: {run_dir}/step_times.jsonl}}"]
    result["train"] = timed(train, env, work / "train.log", work)
    if result["train"]["status"] != 0:
        raise SystemExit(f"training failed; see {work / 'train.log'}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "step_times.jsonl").read_text().splitlines()]
    result["train"].update({"build_seconds": metrics["build_seconds"], "train_seconds": metrics["train_seconds"],
                            "peak_memory_mb": metrics["peak_memory_mb"], "step_seconds": [s["seconds"] for s in steps],
                            "trainable_params": metrics["trainable_params"], "total_params": metrics["total_params"],
                            "test_films": metrics["splits"]["test"]["films"]})
    test_films = [line.split(",")[0] for line in (run_dir / "predictions.csv").read_text().splitlines()[1:]]

    # four of the run's own test films, by their source paths in the prepared cohort's table
    import pandas as pd

    table = pd.read_csv(next((work / "data").rglob("cohort.csv")), dtype=str)
    cohort = work / "predict_films.csv"
    table[table["image_id"].isin(test_films)][["source_path"]].head(4).rename(
        columns={"source_path": "path"}).to_csv(cohort, index=False)
    predict = [str(BIN / "pneumollm-predict"), str(run_dir), str(cohort), "--out", str(work / "predict.csv"),
               "--device", "cpu"]
    result["predict"] = timed(predict, env, work / "predict.log", work)
    if (work / "predict.csv").is_file():  # predict's probabilities against the run's own, film by film
        predicted = pd.read_csv(work / "predict.csv", dtype={"path": str})
        by_path = table.set_index("source_path")["image_id"]
        run = pd.read_csv(run_dir / "predictions.csv", dtype={"image_id": str}).set_index("image_id")["prob"]
        tested = predicted[predicted["status"] == "ok"]
        diffs = [abs(float(p) - float(run[by_path[path]])) for path, p in zip(tested["path"], tested["prob"])]
        result["predict"].update({"films": len(tested), "max_abs_diff_to_run_predictions": max(diffs, default=None)})
    export = [str(BIN / "pneumollm-export"), str(run_dir.parent), "--out", str(work / "export")]
    result["export"] = timed(export, env, work / "export.log", work)
    result["export"]["bytes"] = folder_bytes(work / "export") if (work / "export").is_dir() else 0
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["work"] = str(work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.weights is None and not args.work:
        shutil.rmtree(weights, ignore_errors=True)
    ok = all(result[p]["status"] == 0 for p in ("train", "predict", "export"))
    print(f"written: {args.out}" + ("" if ok else " (a step failed: see its log)"))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
