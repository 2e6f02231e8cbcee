"""Time the ``lungs=threshold`` crop of the real film RG1_UNCI.dcm (pydicom-data): the code in the working tree
against the implementation of an older commit (``--old-ref``, default the commit before the working-size crop),
interleaved in one process, after decoding the film once (the decode is timed on its own).

The old ``threshold.py``, ``crop.py`` and ``components.py`` are read with ``git show REF:...`` into a temporary
package, so both run side by side on the same film with the settings of ``conf/lungs/threshold.yaml``. The script
also checks that both give the same crop (status, reason, box) and the same lung mask pixel for pixel; with
``--compare DIR`` it does that for every film in DIR too (e.g. ``../shared/data/openist-lungs``; nothing is copied).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lung_crop_speed/run.py --out benchmarks/lung_crop_speed/results.json
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
OLD_REF = "87b5cab"  # the last commit whose crop shrank the film with skimage and checked the full-size mask
MODULES = ("components", "crop", "threshold")


def load_old(ref: str, folder: Path):
    """The lung crop modules as of ``ref``, importable as ``old_lungs``: (crop_to_lungs, ThresholdSegmenter)."""
    package = folder / "old_lungs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in MODULES:
        source = subprocess.run(["git", "show", f"{ref}:src/pneumollm/data/lungs/{name}.py"], cwd=REPO,
                                check=True, capture_output=True, text=True).stdout
        for other in MODULES:
            source = source.replace(f"pneumollm.data.lungs.{other} ", f"old_lungs.{other} ")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    crop, threshold = importlib.import_module("old_lungs.crop"), importlib.import_module("old_lungs.threshold")
    return crop.crop_to_lungs, threshold.ThresholdSegmenter


def threshold_settings() -> tuple[dict, float]:
    """The segmenter's keyword arguments and the crop margin from conf/lungs/threshold.yaml."""
    config = yaml.safe_load((REPO / "conf" / "lungs" / "threshold.yaml").read_text())
    config.pop("_target_")
    margin = config.pop("margin")
    return config, margin


def median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 1)


def same_crop(a, b) -> bool:
    masks_equal = (a.mask is None and b.mask is None) or (
        a.mask is not None and b.mask is not None and np.array_equal(a.mask, b.mask))
    return (a.status, a.reason, a.box) == (b.status, b.reason, b.box) and masks_equal


def profile(function, repeats: int = 5, top: int = 12) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeats):
        function()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def compare_folder(folder: Path, old_crop, new_crop, old_segmenter, new_segmenter) -> dict:
    """Old and new crop (margin 0, as the OpenIST benchmark) on every film of ``folder`` (masks ``*@.png`` skipped)."""
    from pneumollm.data.lungs.evaluate import find_pairs, read_grey

    pairs, unpaired = find_pairs(folder)
    films = [film for film, _ in pairs] + list(unpaired)
    differing, times = [], {"old": [], "new": []}
    for index, path in enumerate(films):
        film = read_grey(path)
        results = {}
        for name in ("old", "new") if index % 2 == 0 else ("new", "old"):
            crop, segmenter = (old_crop, old_segmenter) if name == "old" else (new_crop, new_segmenter)
            start = time.perf_counter()
            results[name] = crop(film, segmenter, path.name, margin=0.0)
            times[name].append(time.perf_counter() - start)
        if not same_crop(results["old"], results["new"]):
            differing.append(path.name)
    return {"folder": str(folder), "films": len(films), "films_differing": differing,
            "crop_ms_median": {name: median_ms(values) for name, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each implementation (interleaved)")
    parser.add_argument("--old-ref", default=OLD_REF, help="git commit of the old implementation")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each implementation")
    parser.add_argument("--compare", type=Path, default=None, help="also compare old and new on every film here")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from pydicom.data import get_testdata_file

    from pneumollm.data.films import decode_film
    from pneumollm.data.lungs.crop import crop_to_lungs
    from pneumollm.data.lungs.threshold import ThresholdSegmenter

    with tempfile.TemporaryDirectory() as tmp:
        old_crop, OldSegmenter = load_old(args.old_ref, Path(tmp))
        settings, margin = threshold_settings()
        old_segmenter, new_segmenter = OldSegmenter(**settings), ThresholdSegmenter(**settings)
        path = get_testdata_file("RG1_UNCI.dcm")
        if path is None:
            raise SystemExit("RG1_UNCI.dcm needs the PyPI package pydicom-data")

        decode_times = []
        for _ in range(max(3, args.repeats // 3)):
            start = time.perf_counter()
            film = decode_film(path).pixels
            decode_times.append(time.perf_counter() - start)

        def run_old():
            return old_crop(film, old_segmenter, "RG1_UNCI.dcm", margin=margin)

        def run_new():
            return crop_to_lungs(film, new_segmenter, "RG1_UNCI.dcm", margin=margin)

        old_result, new_result = run_old(), run_new()  # warm-up, and the crops compared
        times: dict[str, list[float]] = {"old": [], "new": []}
        for index in range(args.repeats):
            for name in ("old", "new") if index % 2 == 0 else ("new", "old"):
                start = time.perf_counter()
                (run_old if name == "old" else run_new)()
                times[name].append(time.perf_counter() - start)
        old_ms, new_ms = median_ms(times["old"]), median_ms(times["new"])
        results = {
            "film": "RG1_UNCI.dcm (pydicom-data)",
            "film_shape": list(film.shape),
            "settings": f"conf/lungs/threshold.yaml (margin {margin:g})",
            "old_ref": args.old_ref,
            "repeats": args.repeats,
            "decode_ms_median": median_ms(decode_times),
            "crop_ms_median": {"old": old_ms, "new": new_ms},
            "crop_ms_min": {name: round(1000 * min(values), 1) for name, values in times.items()},
            "speedup_old_over_new": round(old_ms / new_ms, 2),
            "crop": {"status": new_result.status, "box": list(new_result.box) if new_result.box else None},
            "same_crop_and_mask_as_old": same_crop(old_result, new_result),
            "machine": platform.machine(),
            "python": platform.python_version(),
        }
        if args.profile:
            print("== old ==\n" + profile(run_old) + "\n== new ==\n" + profile(run_new))
        if args.compare is not None:
            results["compare"] = compare_folder(args.compare, old_crop, crop_to_lungs, old_segmenter, new_segmenter)
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
