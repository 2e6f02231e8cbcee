"""Do two checkouts give bit-identical results? Every arm of every sweep file, fold 0 of a toy cohort.

For each sweep of ``experiments/`` and each of its arms (fig6b: m = 1 and 2), one job (fold 0 of a two-fold toy
manifest cohort, ``--epochs`` epochs of ``--batches`` batches) is composed as Hydra's multirun composes it and
run by the checkout's own fold function in one process per checkout. Writes, per job, the test metrics and the
test films' probabilities as printed in ``predictions.csv``, then compares two such files.

    # in each checkout (its own code: PYTHONPATH=<checkout>/src:<checkout>, run from the checkout)
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/cpu_performance/bit_identity.py run \
        --out /tmp/after.json \
        --work /tmp/bit_after                                                  # makes /tmp/bit_after/toy/manifest.csv
    cp -r /tmp/bit_after/toy /tmp/bit_toy
    cd /tmp/pre15 && HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/pre15/src:/tmp/pre15 /work/main/.venv/bin/python \
        /work/main/benchmarks/cpu_performance/bit_identity.py run --out /tmp/before.json --work /tmp/bit_before \
        --manifest /tmp/bit_toy/manifest.csv
    .venv/bin/python benchmarks/cpu_performance/bit_identity.py compare /tmp/before.json /tmp/after.json \
        --out benchmarks/cpu_performance/bit_identity.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path


def _jobs(experiments: Path) -> list[tuple[str, list[str]]]:
    import yaml

    jobs = []
    for path in sorted(experiments.glob("*.yaml")):
        params = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
        arms = [[f"arm={a}"] for a in params["arm"].split(",")] if "arm" in params else [[]]
        if path.stem == "fig6b":
            arms = [["token_engine.m=1"], ["token_engine.m=2"]]
        jobs += [(path.stem, arm) for arm in arms]
    return jobs


def run(args: argparse.Namespace) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    from tests.helpers import make_toy_manifest

    import pneumollm
    from pneumollm.config import register_resolvers
    from pneumollm.paths import conf_dir, experiments_dir
    from pneumollm.training.run import run_fold

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    manifest = Path(args.manifest) if args.manifest else make_toy_manifest(work / "toy", n_patients=12, size=48)
    register_resolvers()
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for sweep, arm in _jobs(experiments_dir()):
        key = f"{sweep} {' '.join(arm)}".strip()
        if args.only and key not in args.only:
            continue
        overrides = [f"hydra.searchpath=[file://{conf_dir()}]", "data=manifest", f"data.source.manifest={manifest}",
                     "lungs=none", "data.num_folds=2", "data.val_fraction=0.25", "data.min_film_size=16",
                     "data.progress=false", "data.preprocess_workers=1", f"trainer.max_epochs={args.epochs}",
                     f"+trainer.limit_train_batches={args.batches}", "logger=none", "callbacks.progress=null",
                     f"paths.root_dir={work / 'runs'}", *arm, "data.fold=0", *args.set]
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(experiments_dir())):
            cfg = compose(sweep, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.run_dir = str(Path(cfg.hydra.sweep.dir) / cfg.hydra.sweep.subdir)
            del cfg["hydra"]
        run_dir = Path(cfg.paths.run_dir)
        run_fold(cfg)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        with (run_dir / "predictions.csv").open() as handle:
            probs = {row["image_id"]: row["prob"] for row in csv.DictReader(handle)}
        results[key] = {"metrics": {k: v for k, v in metrics.items() if k.startswith("test/")}, "probs": probs}
        print(f"{key}: auc {metrics.get('test/auc')}", flush=True)
    GlobalHydra.instance().clear()
    out = {"code": str(Path(pneumollm.__file__).resolve().parent), "epochs": args.epochs, "batches": args.batches,
           "seconds": round(time.perf_counter() - started, 1), "jobs": results}
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


def _same(a: object, b: object) -> bool:
    """Equal, or both NaN (a figure that does not exist on either side, e.g. the slope of separated classes)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def compare(args: argparse.Namespace) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in (args.before, args.after))
    rows = {}
    for key in sorted(set(a["jobs"]) | set(b["jobs"])):
        if key not in a["jobs"] or key not in b["jobs"]:
            rows[key] = "only in " + ("after" if key not in a["jobs"] else "before")
            continue
        pa, pb = a["jobs"][key]["probs"], b["jobs"][key]["probs"]
        ma, mb = a["jobs"][key]["metrics"], b["jobs"][key]["metrics"]
        same_metrics = {k: ma[k] for k in ma if k in mb and _same(ma[k], mb[k])}
        if pa == pb and len(same_metrics) == len(ma):
            rows[key] = "identical"
        else:
            diff = max((abs(float(pa[i]) - float(pb[i])) for i in pa if i in pb), default=float("nan"))
            rows[key] = f"differs: max |prob difference| {diff:.3g}, metrics differing " + ", ".join(
                sorted(set(ma) - set(same_metrics)))
    summary = {"before": a["code"], "after": b["code"], "epochs": a["epochs"], "batches": a["batches"],
               "jobs": len(rows), "identical": sum(v == "identical" for v in rows.values()), "per_job": rows}
    text = json.dumps(summary, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    sys.exit(0 if summary["identical"] == summary["jobs"] else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--manifest", help="a toy manifest to use (both checkouts must see the same films)")
    r.add_argument("--only", nargs="*", default=[], help="these jobs only, e.g. 'table2 arm=swin_t'")
    r.add_argument("--set", nargs="*", default=[], help="extra overrides for every job")
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--batches", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--out")
    args = parser.parse_args()
    run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    main()
