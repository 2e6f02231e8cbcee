"""``pneumollm-aggregate`` wall time, this checkout against another one (e.g. main before the change), in one run.

Two studies: the demo's five folds (``--demo``, made by ``make demo``: the summary only, what ``make demo`` runs at
its end) and a fake finished Table 6 (six arms x five folds of 120 films each, with features, written here) with
``--table table6`` (summary, table, bootstrap intervals, figures). Each command runs ``--repeats`` times per
checkout, alternating; the first run of each is the cold one (bytecode, the full-size parameter counts), the
median of the others is "warm". This checkout keeps a study's outputs when nothing they are made from changed, so
its warm runs of an unchanged table only show them; the "remade" case passes ``--force`` to time the work itself.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_performance/aggregate.py --before /tmp/main-before \
        --out benchmarks/cpu_performance/aggregate.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ARMS = ("baseline", "adapter", "adapter_coop", "adapter_cocoop", "adapter_cmte", "pneumollm")


def fake_table6(runs: Path, films_per_fold: int = 24, seed: int = 0) -> None:
    """Six arms x five folds of finished runs (job.json, metrics.json, predictions.csv, features.npz)."""
    rng = np.random.default_rng(seed)
    for a, arm in enumerate(ARMS):
        for fold in range(5):
            run = runs / arm / f"fold{fold}"
            run.mkdir(parents=True)
            labels = rng.integers(0, 2, films_per_fold)
            probs = np.clip(labels * (0.2 + 0.05 * a) + rng.normal(0.4, 0.2, films_per_fold), 0, 1)
            ids = [f"f{fold}_{i}" for i in range(films_per_fold)]
            chash = f"{arm}{fold}"
            metrics = {f"test/{m}": float(rng.uniform(60, 90)) for m in ("sensitivity", "specificity", "accuracy",
                                                                          "auc", "avg")}
            metrics.update(fold=fold, arm=arm, label=arm, config_hash=chash, trainable_params=1000 + a,
                           cohort={"films": "F", "folds": "K"}, peak_memory_mb=100.0)
            (run / "job.json").write_text(json.dumps({"config_hash": chash}))
            (run / "metrics.json").write_text(json.dumps(metrics))
            (run / "config.yaml").write_text(f"experiment:\n  reference: baseline\n  arm: {arm}\nsize_name: tiny\n"
                                             "trainer:\n  max_epochs: 100\nthreshold: 0.5\n")
            with (run / "predictions.csv").open("w", newline="") as handle:
                out = csv.writer(handle)
                out.writerow(["image_id", "patient_id", "fold", "label", "prob"])
                out.writerows((i, f"P{i}", fold, int(y), f"{p:.6f}") for i, y, p in zip(ids, labels, probs))
            features = rng.normal(size=(films_per_fold, 16)).astype(np.float32)
            np.savez_compressed(run / "features.npz", features=features, labels=labels, image_ids=np.array(ids))


def _time(checkout: Path, args: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(checkout / "src")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pneumollm.cli.aggregate", *args], env=env, capture_output=True,
                          text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{checkout} {args}: {(done.stdout + done.stderr)[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--demo", type=Path, default=REPO / "outputs/demo/demo")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/cpu_performance/aggregate.json")
    args = parser.parse_args()
    if not (args.demo / "pneumollm").is_dir():
        raise SystemExit(f"{args.demo}: run `make demo` first")
    checkouts = {"before": args.before.resolve(), "after": REPO}
    result: dict = {"repeats": args.repeats, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cases = {}
        for name in checkouts:
            demo = Path(tmp) / name / "demo"
            shutil.copytree(args.demo, demo)
            study = Path(tmp) / name / "table6"
            fake_table6(study / "runs")
            cases.setdefault("demo summary", {})[name] = [str(demo), "--no-wandb"]
            table_dir = study / "runs" if name == "before" else study  # main took the runs folder itself
            table_args = [str(table_dir), "--table", "table6", "--no-wandb", "--partial"]
            cases.setdefault("table6 with figures", {})[name] = table_args
            # this checkout keeps unchanged outputs; --force makes it compute everything again, like main did
            cases.setdefault("table6 with figures, remade", {})[name] = table_args + (["--force"] if name == "after"
                                                                                       else [])
        for case, commands in cases.items():
            times: dict[str, list[float]] = {name: [] for name in checkouts}
            for _ in range(args.repeats):
                for name, checkout in checkouts.items():
                    times[name].append(_time(checkout, commands[name]))
            row = {name: {"cold": round(t[0], 2), "warm_median": round(statistics.median(t[1:]), 2),
                          "all": [round(x, 2) for x in t]} for name, t in times.items()}
            row["warm_ratio_before_over_after"] = round(row["before"]["warm_median"] / row["after"]["warm_median"], 2)
            result["cases"][case] = row
            print(f"{case}: before {row['before']['warm_median']} s, after {row['after']['warm_median']} s warm "
                  f"({row['warm_ratio_before_over_after']}x); cold {row['before']['cold']} / {row['after']['cold']} s",
                  flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
