"""How often the shift column's intensity and layout rules fire on training films, held-out films and altered films.

The demo cohort (80 patients, 512 px, ``signal_strength`` 4 as ``conf/data/demo.yaml``) is generated and prepared
in ``--work`` (``lungs=threshold``, 224-px inputs), split into ``data.folds_seed=0``'s five folds; each fold's
profile is built from its training films exactly as the fold runner does (``film_profile.profile_prepared``), and
``inference.shift.shift_reasons`` is applied to the training films themselves, the held-out test films, and the
test films inverted, darkened, brightened, gamma-corrected, at half contrast and shifted by +-30 grey levels.
With ``../shared/data/pneumoniamnist`` present, the same on PneumoniaMNIST (its 3,882 training films as the
profile, its 624 test films) and the real DICOM RG1_UNCI.dcm (pydicom-data) against that profile
(``PNEUMOLLM_SHARED_DATA`` points elsewhere, as for the tests).

    .venv/bin/python benchmarks/shift_calibration/run.py --work /tmp/shift_work --out benchmarks/shift_calibration
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import yaml

from pneumollm.data.film_array import load_film_array
from pneumollm.data.film_profile import build_profile, intensity_distance, intensity_histograms, profile_prepared
from pneumollm.data.film_source import FilmSource, cached_sources, film_source
from pneumollm.data.folds import load_or_make_folds
from pneumollm.data.preprocess import prepare_cohort, read_cohort_index
from pneumollm.data.preprocess_plan import build_segmenter, preprocess_settings_from_config
from pneumollm.data.sources import list_cohort
from pneumollm.inference.shift import intensity_threshold, shift_reasons

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("PNEUMOLLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "pneumoniamnist" / \
    "pneumoniamnist.npz"


def altered(images: np.ndarray) -> dict[str, np.ndarray]:
    x = images.astype(np.float64)
    variants = {"inverted (255 - x)": 255 - x, "dark (0.4 x)": 0.4 * x, "bright (102 + 0.6 x)": 102 + 0.6 * x,
                "gamma 2": 255 * (x / 255) ** 2, "gamma 0.5": 255 * (x / 255) ** 0.5,
                "half contrast (64 + 0.5 x)": 64 + 0.5 * x, "+30 grey levels": x + 30, "-30 grey levels": x - 30}
    return {k: np.clip(np.rint(v), 0, 255).astype(np.uint8) for k, v in variants.items()}


def flagged(profile: dict, images: np.ndarray, sources: list[FilmSource], crops: list[str]) -> dict[str, int]:
    counts: Counter[str] = Counter(films=len(images))
    for image, source, crop in zip(images, sources, crops):
        reasons = shift_reasons(profile, source, crop, image)
        counts["any"] += bool(reasons)
        counts["intensity"] += any(r.startswith("input intensity") for r in reasons)
        counts["inverted"] += any(r.startswith("input looks inverted") for r in reasons)
    return dict(counts)


def summary(profile: dict) -> dict[str, float]:
    return {"threshold": round(intensity_threshold(profile), 2), **profile["intensity"]["distance"],
            "layout_q0": profile["layout"]["correlation"]["q0"], "layout_q1": profile["layout"]["correlation"]["q1"]}


def demo(work: Path) -> dict:
    lungs = yaml.safe_load((REPO / "conf/lungs/threshold.yaml").read_text())
    settings = preprocess_settings_from_config({"image_size": 224, "lungs": lungs})
    listing = list_cohort({"kind": "demo", "dir": str(work / "raw"), "n_patients": 80, "seed": 0, "image_size": 512,
                           "signal_strength": 4.0}, progress=False)
    cohort = prepare_cohort(listing, work / "prepared", settings, partial(build_segmenter, settings), progress=False)
    films = read_cohort_index(cohort.folder)
    images = np.asarray(load_film_array(cohort.folder, films, 224))
    sources = cached_sources([(f.content_hash, f.source_path) for f in films], work / "prepared")
    folds = load_or_make_folds(work / "prepared/folds.csv", [(f.patient_id, f.target) for f in films], 5, 0)
    out: dict = {"films": len(films), "folds": {}, "own_distances": {"training": [], "test": []}}
    for fold in range(5):
        test = [i for i, f in enumerate(films) if folds[f.patient_id] == fold]
        train = [i for i, f in enumerate(films) if folds[f.patient_id] != fold]
        profile = profile_prepared([films[i] for i in train], images[train], work / "prepared")
        groups = {"training films": train, "held-out test films": test}
        rows = {name: flagged(profile, images[idx], [sources[i] for i in idx], [films[i].crop_status for i in idx])
                for name, idx in groups.items()}
        for name, variant in altered(images[test]).items():
            rows[name] = flagged(profile, variant, [sources[i] for i in test], [films[i].crop_status for i in test])
        for split, idx in (("training", train), ("test", test)):
            own = intensity_distance(intensity_histograms(images[idx]), profile["intensity"]["histogram"])
            out["own_distances"][split] += [round(float(d), 3) for d in own]
        out["folds"][fold] = {"profile": summary(profile), "flagged": rows}
    return out


def mnist() -> dict | None:
    if not SHARED.is_file():
        return None
    data = np.load(SHARED)
    train, test = data["train_images"], data["test_images"]
    source = FilmSource("PNG", 28, 28, 8)
    profile = build_profile([source] * len(train), ["not_cropped"] * len(train), train)
    rows = {"training films": flagged(profile, train, [source] * len(train), ["not_cropped"] * len(train)),
            "test films": flagged(profile, test, [source] * len(test), ["not_cropped"] * len(test))}
    for name, variant in altered(test).items():
        rows[name] = flagged(profile, variant, [source] * len(test), ["not_cropped"] * len(test))
    out = {"profile": summary(profile), "flagged": rows}
    try:
        from pydicom.data import get_testdata_file

        from pneumollm.data.films import decode_film
        from pneumollm.data.preprocess import resize_film

        path = get_testdata_file("RG1_UNCI.dcm")
        image = resize_film(decode_film(path).pixels, 28)
        out["RG1_UNCI.dcm"] = shift_reasons(profile, film_source(path), "not_cropped", image)
    except (ImportError, TypeError):  # pydicom-data absent
        pass
    return out


def quantiles(values: list[float]) -> str:
    return ", ".join(f"{q}%: {np.percentile(values, q):.1f}" for q in (0, 50, 95, 99, 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="where the demo cohort is generated and prepared")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json")
    args = parser.parse_args()
    results = {"demo": demo(args.work), "pneumoniamnist": mnist()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for fold, entry in results["demo"]["folds"].items():
        print(f"demo fold {fold}: {entry['profile']}")
        for name, row in entry["flagged"].items():
            print(f"  {name:28s} any {row['any']}/{row['films']}  intensity {row['intensity']}  "
                  f"inverted {row['inverted']}")
    for split, values in results["demo"]["own_distances"].items():
        print(f"demo {split} films' own intensity distances: {quantiles(values)}")
    if results["pneumoniamnist"]:
        entry = results["pneumoniamnist"]
        print(f"PneumoniaMNIST: {entry['profile']}")
        for name, row in entry["flagged"].items():
            print(f"  {name:28s} any {row['any']}/{row['films']}  intensity {row['intensity']}  "
                  f"inverted {row['inverted']}")
        print(f"  RG1_UNCI.dcm: {entry.get('RG1_UNCI.dcm')}")


if __name__ == "__main__":
    main()
