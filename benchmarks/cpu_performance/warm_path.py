"""The cache-hit path of a fold (listing the cohort, the preprocessing cache lookups, folds, loading the films into
memory) in films per second on one core, this checkout against another one (e.g. the main branch before the
change) in one run.

Makes a manifest cohort of ``--films`` PNG films, then for each checkout runs, in a fresh process pinned to one
core (``taskset -c 0``, one torch thread): one cold ``prepare_data() + setup("fit")`` that fills the caches, then
``--repeats`` warm ones, alternating between the checkouts. Each measurement is a new process, so it includes
everything a fold's start pays once per process after the imports (code fingerprint, decoder versions).
Reports the median warm time and films per second for each, and their ratio.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_performance/warm_path.py --before /tmp/main-before \
        --out benchmarks/cpu_performance/warm_path.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers import make_toy_manifest  # noqa: E402

SNIPPET = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pneumollm.config import register_resolvers
from pneumollm.paths import conf_dir
import pneumollm.data.datamodule  # imports are not the cache-hit path (they cost the same however warm the cache)
register_resolvers()
manifest, root, mode = sys.argv[1], sys.argv[2], sys.argv[3]
overrides = ["data=manifest", f"data.source.manifest={manifest}", "lungs=none", "data.progress=false",
             "data.preprocess_workers=1", f"paths.root_dir={root}", "logger=none"]
with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
    cfg = compose("train", overrides=overrides)
start = time.perf_counter()
datamodule = instantiate(cfg.data, _convert_="object")
datamodule.prepare_data()
datamodule.setup("fit")
elapsed = time.perf_counter() - start
films = sum(len(d) for d in datamodule.datasets.values())
print(json.dumps({"seconds": elapsed, "films": films}))
"""


def _measure(checkout: Path, manifest: Path, root: Path, mode: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{checkout / 'src'}", "OMP_NUM_THREADS": "1"}
    prefix = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    done = subprocess.run([*prefix, sys.executable, "-c", SNIPPET, str(manifest), str(root), mode], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (e.g. a git worktree of main)")
    parser.add_argument("--films", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/cpu_performance/warm_path.json")
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": REPO}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_toy_manifest(Path(tmp) / "cohort", n_patients=args.films, size=256)
        roots = {name: Path(tmp) / name for name in checkouts}
        cold = {name: _measure(path, manifest, roots[name], "cold") for name, path in checkouts.items()}
        warm: dict[str, list[float]] = {name: [] for name in checkouts}
        for _ in range(args.repeats):
            for name, path in checkouts.items():
                warm[name].append(_measure(path, manifest, roots[name], "warm")["seconds"])
    result = {"films": args.films, "repeats": args.repeats, "checkouts": {k: str(v) for k, v in checkouts.items()}}
    for name in checkouts:
        median = statistics.median(warm[name])
        result[name] = {"cold_seconds": round(cold[name]["seconds"], 3),
                        "warm_seconds": [round(t, 4) for t in warm[name]],
                        "warm_median_seconds": round(median, 4), "films_per_second": round(args.films / median)}
    result["speedup"] = round(result["before"]["warm_median_seconds"] / result["after"]["warm_median_seconds"], 2)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in checkouts:
        print(f"{name}: warm {result[name]['warm_median_seconds']} s = {result[name]['films_per_second']} films/s "
              f"(cold {result[name]['cold_seconds']} s)")
    print(f"ratio {result['speedup']}x; written: {args.out}")


if __name__ == "__main__":
    main()
