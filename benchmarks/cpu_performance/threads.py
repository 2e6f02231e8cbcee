"""The CPU thread policy: one demo fold trained by this checkout and by another one (e.g. main before the change),
on a quiet machine and on one whose cores are all busy with another job, in one run.

Variants: ``before`` (the other checkout: torch's default threads, OpenMP's default waiting), ``after`` (this
checkout's defaults: ``trainer.cpu_threads=1`` and ``OMP_WAIT_POLICY=PASSIVE``) and ``after_all_threads`` (this
checkout with ``trainer.cpu_threads=0``: torch's default threads, passive waiting). Each trains fold 0 of the demo
cohort for ``--epochs`` epochs through ``pneumollm-train`` (its own process; a first untimed run per variant
prepares the cohort), ``--repeats`` times in turn, with ``--busy`` processes spinning on the CPU or none. Reports
median wall and CPU seconds, and the test AUC (the policy must not change results).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_performance/threads.py --before /tmp/main-before \
        --out benchmarks/cpu_performance/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BURNER = "while True: pass"


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _train(checkout: Path, root: Path, epochs: int, extra: list[str], env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(checkout / "src"), **env_extra)
    command = [sys.executable, "-m", "pneumollm.cli.train", "data.fold=0", f"trainer.max_epochs={epochs}",
               "logger=none", "callbacks.progress=null", "data.progress=false", f"paths.root_dir={root}",
               "force=true", *extra]
    cpu0, wall0 = _cpu_children(), time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall0, _cpu_children() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {done.stderr[-2000:]}")
    metrics = next(root.rglob("metrics.json"))
    return {"wall": wall, "cpu": cpu, "auc": json.loads(metrics.read_text())["test/auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="spinning processes in the busy case")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/cpu_performance/threads.json")
    args = parser.parse_args()
    variants = {"before": (args.before.resolve(), [], {}), "after": (REPO, [], {}),
                "after_all_threads": (REPO, ["trainer.cpu_threads=0"], {})}
    result: dict = {"epochs": args.epochs, "repeats": args.repeats, "busy_processes": args.busy,
                    "cpus": os.cpu_count(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(tmp) / name for name in variants}
        for name, (checkout, extra, env) in variants.items():
            roots[name].mkdir()
            _train(checkout, roots[name], 1, extra, env)  # prepares the cohort, untimed
        for load in ("quiet", "busy"):
            count = args.busy if load == "busy" else 0
            burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(count)]
            try:
                runs: dict[str, list[dict]] = {name: [] for name in variants}
                for _ in range(args.repeats):
                    for name, (checkout, extra, env) in variants.items():
                        runs[name].append(_train(checkout, roots[name], args.epochs, extra, env))
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()
            result["runs"][load] = {name: {"wall_median": round(statistics.median(r["wall"] for r in rs), 1),
                                           "cpu_median": round(statistics.median(r["cpu"] for r in rs), 1),
                                           "test_auc": [r["auc"] for r in rs]} for name, rs in runs.items()}
            before, after = result["runs"][load]["before"], result["runs"][load]["after"]
            ratio = before["wall_median"] / after["wall_median"]
            result["runs"][load]["wall_ratio_before_over_after"] = round(ratio, 2)
            print(f"{load}: " + ", ".join(f"{n} {v['wall_median']} s wall / {v['cpu_median']} s CPU"
                                          for n, v in result["runs"][load].items() if isinstance(v, dict)), flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
