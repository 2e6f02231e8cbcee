"""Do the attribution maps point at the opacities? Measured on a fold trained on the demo cohort.

For each positive TEST film of the run (its predictions.csv) the script rebuilds the opacity mask the demo
generator drew (the ``opacities`` of the patient's anatomy, placed on the film with the generator's own pose;
the demo's ``masks/`` folder holds the lungs only), maps it through the film's lung-crop box and resizes it
to the model input like the film, computes occlusion and integrated-gradients maps with
``pneumollm.inference.explain`` and reports

    ratio = mean positive attribution inside the opacity mask / mean positive attribution outside it

outside meaning the rest of the model input (the crop), and, stricter, the rest of the lungs. A map blind to
the opacities gives about 1. Two controls: the run's net before training (same seed, same frozen weights,
trainable parts as initialised), and the input's own brightness used as a map (opacities are bright discs on
dark lungs, so any map that follows brightness scores well on "lungs"). Besides the two default methods it
measures the alternatives the defaults were chosen against (mean and blurred baselines, an 8 px window,
occlusion of p instead of the log-odds). Writes results.json, results.md and three example PNGs.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/explanations/run.py outputs/demo/demo/pneumollm/fold0
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pneumollm.config import register_resolvers
from pneumollm.data import synthetic
from pneumollm.data.films import decode_film
from pneumollm.data.preprocess import resize_film
from pneumollm.inference.explain import attribution_maps, forward_passes, write_explanation
from pneumollm.training.module import frozen_mismatch
from pneumollm.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent


def build_nets(run_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module, object, dict]:
    """(trained net, the same net as initialised before training, loss, config) of a fold's run folder."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    register_resolvers()
    cfg = OmegaConf.load(run_dir / "config.yaml")
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    nets = []
    for _ in range(2):
        torch.manual_seed(int(cfg.seed))  # as the training app seeds before building: the run's initial weights
        nets.append(instantiate(cfg.model, _convert_="object").eval())
    trained, initial = nets
    weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    result = trained.load_state_dict(weights, strict=False)
    missing = sorted(trainable - set(weights))
    if missing or result.unexpected_keys:
        sys.exit(f"checkpoint does not fit the config's model: missing {missing[:3]}, unexpected "
                 f"{result.unexpected_keys[:3]}")
    why = frozen_mismatch(trained, checkpoint)
    if why is not None:
        sys.exit(f"the rebuilt frozen weights differ from those the run trained with: {why}")
    return trained, initial, instantiate(cfg.loss), OmegaConf.to_container(cfg, resolve=True)


class OpacityMasks:
    """The demo generator's opacities of one film, as a boolean mask in the film's pixels (lungs only)."""

    def __init__(self, labels_csv: Path) -> None:
        self.root = labels_csv.parent
        self.labels_csv = labels_csv
        self.stamp = json.loads((self.root / synthetic.STAMP_NAME).read_text())
        if self.stamp.get("generator_version") != synthetic.GENERATOR_VERSION:
            sys.exit(f"{self.root}: written by another version of the demo generator")
        patients = synthetic._plan_patients(self.stamp["n_patients"], self.stamp["seed"],
                                            self.stamp["positive_fraction"])
        self.films = {f.relpath: f for f in synthetic._plan_films(
            patients, self.stamp["seed"], self.stamp["image_size"], self.stamp["include_faulty"])}

    def __call__(self, relpath: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(opacity mask, lung mask, IoU of the mask with the pixels the opacities brighten by at least half
        their median contrast: a check that the mask sits where the generator drew)."""
        film = self.films[relpath]
        seed, rows, cols = self.stamp["seed"], self.stamp["image_size"], film.columns
        anatomy = synthetic._make_anatomy(seed, film.patient, self.stamp.get("signal_strength", 1.0))
        centres = synthetic._to_pixels(anatomy.opacities[:, :2], rows, cols, synthetic._pose(film, anatomy))
        radii = anatomy.opacities[:, 2] / film.pixel_spacing  # half-maximum radius of _stamp_blobs' discs
        yy, xx = np.ogrid[:rows, :cols]
        discs = np.zeros((rows, cols), dtype=bool)
        for (r, c), radius in zip(centres, radii):
            discs |= (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
        lungs = np.asarray(Image.open(synthetic.demo_mask_path(self.labels_csv, relpath))) > 0
        with_opacities, _ = synthetic._render_film(film, anatomy, rows, seed)
        without, _ = synthetic._render_film(film, replace(anatomy, opacities=np.zeros((0, 4))), rows, seed)
        footprint = (with_opacities - without) > 0.5 * float(np.median(anatomy.opacities[:, 3]))
        mask = discs & lungs
        iou = float((mask & footprint).sum() / max((mask | footprint).sum(), 1))
        return mask, lungs, iou


def to_input(mask: np.ndarray, box: list[int] | None, size: int) -> np.ndarray:
    """A full-film mask cropped by ``box`` (top, left, bottom, right) and resized to the model input."""
    if box is not None:
        top, left, bottom, right = box
        mask = mask[top:bottom, left:right]
    return resize_film(mask.astype(np.uint8) * 255, size) > 127


def ratio(attribution: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> float:
    """Mean positive attribution inside / outside (nan when the outside carries none)."""
    positive = np.clip(attribution, 0.0, None)
    out = float(positive[outside].mean())
    return float(positive[inside].mean()) / out if out > 0 else float("nan")


# (label, method, options): the defaults first, then what the choice of defaults rests on
VARIANTS: list[tuple[str, str, dict]] = [
    ("occlusion", "occlusion", {}),
    ("integrated_gradients", "integrated_gradients", {}),
    ("occlusion, mean baseline", "occlusion", {"baseline": "mean"}),
    ("occlusion, blur baseline", "occlusion", {"baseline": "blur"}),
    ("occlusion, 8 px window", "occlusion", {"window": 8, "stride": 4}),
    ("occlusion of p", "occlusion", {"output": "probability"}),
]
BRIGHTNESS = "input brightness (no net)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, nargs="?", default=Path("outputs/demo/demo/pneumollm/fold0"))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--films", type=int, default=None, help="only the first N positive test films")
    parser.add_argument("--defaults-only", action="store_true", help="only the two default methods")
    parser.add_argument("--no-control", action="store_true", help="skip the untrained-net control")
    parser.add_argument("--examples", type=int, default=3, help="example PNGs to write (at most 3)")
    args = parser.parse_args()
    run_dir = args.run_dir
    if not (run_dir / "checkpoints" / "best.ckpt").is_file():
        sys.exit(f"{run_dir}: no trained fold there (make demo, or HF_HUB_OFFLINE=1 .venv/bin/pneumollm-train "
                 "data.fold=0 logger=none paths.output_dir=/tmp/explain_demo)")
    trained, initial, loss, cfg = build_nets(run_dir)
    probability = loss.positive_probability
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cohort = Path(metrics["cohort_folder"])
    index = {row["image_id"]: row for row in csv.DictReader((cohort / "cohort.csv").open())}
    predictions = [row for row in csv.DictReader((run_dir / "predictions.csv").open()) if row["label"] == "1"]
    predictions = predictions[:args.films] if args.films else predictions
    source = cfg["data"]["source"]
    if source.get("kind") != "demo":
        sys.exit(f"{run_dir}: trained on {source.get('kind')!r}, not the demo cohort")
    masks = OpacityMasks(Path(source["dir"]) / "labels.csv")
    variants = VARIANTS[:2] if args.defaults_only else VARIANTS
    nets = {"trained": trained} if args.no_control else {"trained": trained, "initial": initial}

    rows, maps, started = [], {}, time.perf_counter()
    for n, pred in enumerate(predictions):
        entry = index[pred["image_id"]]
        sidecar = json.loads((cohort / entry["file"]).with_suffix(".json").read_text())
        image = np.array(Image.open(cohort / entry["file"]))
        x = torch.from_numpy(image).float().div(255.0)[None, None]
        with torch.no_grad():
            prob = float(probability(trained(x))[0])
        if abs(prob - float(pred["prob"])) > 1e-3:
            sys.exit(f"{pred['image_id']}: rebuilt net gives P = {prob:.4f}, predictions.csv {pred['prob']}")
        relpath = "dicom/" + pred["image_id"]
        mask, lungs, iou = masks(relpath)
        opacity = to_input(mask, sidecar["box"], image.shape[0])
        lung_input = to_input(lungs, sidecar["box"], image.shape[0])
        row = {"image_id": pred["image_id"], "prob": round(prob, 4), "category": masks.films[relpath].patient.category,
               "opacity_area": round(float(opacity.mean()), 4), "mask_check_iou": round(iou, 3)}
        found = {BRIGHTNESS: (image.astype(np.float32), 0.0)}
        for net_name, net in nets.items():
            for label, method, options in variants:
                t0 = time.perf_counter()
                a = attribution_maps(net, x, method, probability=probability, **options)[0]
                found[f"{net_name}: {label}"] = (a, time.perf_counter() - t0)
        for key, (a, seconds) in found.items():
            row[f"{key} | seconds"] = round(seconds, 2)
            row[f"{key} | ratio_crop"] = round(ratio(a, opacity, ~opacity), 3)
            row[f"{key} | ratio_lung"] = round(ratio(a, opacity, lung_input & ~opacity), 3)
            maps[(pred["image_id"], key)] = a
        rows.append(row)
        print(f"[{n + 1}/{len(predictions)}] {pred['image_id']} P={prob:.3f} mask IoU {iou:.2f} "
              + "; ".join(f"{k}: {row[f'{k} | ratio_crop']}" for k in found), flush=True)

    keys = [k.removesuffix(" | ratio_crop") for k in rows[0] if k.endswith(" | ratio_crop")]
    summary = {}
    for k in keys:
        crop, lung = [r[f"{k} | ratio_crop"] for r in rows], [r[f"{k} | ratio_lung"] for r in rows]
        summary[k] = {"median_ratio_crop": statistics.median(crop), "median_ratio_lung": statistics.median(lung),
                      "films_above_1_crop": sum(v > 1 for v in crop), "films_above_1_lung": sum(v > 1 for v in lung),
                      "median_seconds": statistics.median(r[f"{k} | seconds"] for r in rows)}
        control = k.replace("trained: ", "initial: ")
        if k.startswith("trained: ") and control in keys:
            summary[k]["films_above_initial_crop"] = sum(r[f"{k} | ratio_crop"] > r[f"{control} | ratio_crop"]
                                                         for r in rows)
    passes = {label: forward_passes(method, *image.shape, **options) for label, method, options in variants}
    result = {"run_dir": str(run_dir), "test_auc": metrics.get("test/auc"), "films": len(rows),
              "median_mask_check_iou": statistics.median(r["mask_check_iou"] for r in rows),
              "forward_passes_per_film": passes, "torch_threads": torch.get_num_threads(),
              "total_seconds": round(time.perf_counter() - started, 1), "summary": summary, "per_film": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", result)
    atomic_write_text(args.out / "results.md", markdown(result, keys))
    write_examples(args, rows, maps, masks, cohort, index)
    print(markdown(result, keys))


def markdown(result: dict, keys: list[str]) -> str:
    """The summary and the per-film ratios (the trained net's default methods) as Markdown tables."""
    n = result["films"]
    lines = [f"{n} positive test films of `{result['run_dir']}` (test AUC {result['test_auc']}); opacity masks "
             f"checked against the generator's rendering: median IoU {result['median_mask_check_iou']:.2f}.", "",
             "| map | median ratio, crop | median ratio, lungs | ratio > 1 (crop) | ratio > 1 (lungs) "
             "| above the untrained net (crop) | s/film |", "|---|---|---|---|---|---|---|"]
    for k in keys:
        s = result["summary"][k]
        above = f"{s['films_above_initial_crop']}/{n}" if "films_above_initial_crop" in s else ""
        lines.append(f"| {k} | {s['median_ratio_crop']:.2f} | {s['median_ratio_lung']:.2f} | "
                     f"{s['films_above_1_crop']}/{n} | {s['films_above_1_lung']}/{n} | {above} | "
                     f"{s['median_seconds']:.1f} |")
    shown = [k for k in keys if k in (BRIGHTNESS, "trained: occlusion", "trained: integrated_gradients",
                                      "initial: occlusion", "initial: integrated_gradients")]
    lines += ["", "Per film, ratio crop / lungs:", "",
              "| film | P | ILO cat. | opacity area | " + " | ".join(shown) + " |",
              "|---|---|---|---|" + "---|" * len(shown)]
    for r in result["per_film"]:
        lines.append(f"| {r['image_id']} | {r['prob']:.3f} | {r['category']} | {r['opacity_area']:.3f} | " + " | ".join(
            f"{r[f'{k} | ratio_crop']:.2f} / {r[f'{k} | ratio_lung']:.2f}" for k in shown) + " |")
    return "\n".join(lines) + "\n"


def write_examples(args: argparse.Namespace, rows: list[dict], maps: dict, masks: OpacityMasks, cohort: Path,
                   index: dict) -> None:
    """Up to three PNGs (the generator's opacities outlined in green):
    the most and the least confidently detected film by occlusion, the most confident one by integrated
    gradients."""
    ranked = sorted(rows, key=lambda r: r["prob"])
    picks = [(ranked[-1], "occlusion"), (ranked[-1], "integrated_gradients"), (ranked[0], "occlusion")]
    for row, method in picks[:max(0, min(args.examples, 3))]:
        key = f"trained: {method}"
        entry = index[row["image_id"]]
        sidecar = json.loads((cohort / entry["file"]).with_suffix(".json").read_text())
        film = decode_film(entry["source_path"]).pixels
        image = np.asarray(Image.open(cohort / entry["file"]))
        opacity = to_input(masks("dicom/" + row["image_id"])[0], sidecar["box"], image.shape[0])
        stem = row["image_id"].removesuffix(".dcm").replace("/", "_")
        path = write_explanation(
            args.out / f"example_{stem}_{method}.png", film, sidecar["box"], image, maps[(row["image_id"], key)],
            row["prob"], title=f"{row['image_id']}, {method.replace('_', ' ')}, ratio {row[f'{key} | ratio_crop']:.2f}",
            colorbar_label="drop in log-odds when hidden" if method == "occlusion" else "log-odds contribution",
            outline=opacity)
        with Image.open(path) as png:  # lossless recompression: about 15 % smaller
            atomic_write_bytes(path, png_bytes_of(png.convert("RGB")))


def png_bytes_of(picture: Image.Image) -> bytes:
    """A PIL image as optimised PNG bytes."""
    from io import BytesIO

    buffer = BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
