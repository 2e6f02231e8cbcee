"""Which of the suite's functions and files one training run passes through (``pneumollm-train`` on the demo).

Runs ``pneumollm-train --config-name demo data.fold=0`` in this process under ``sys.setprofile`` and records the
first call of every function defined in the ``pneumollm`` package, in order. Counts: named functions (module
bodies, comprehensions and lambdas left out), the files they live in, and how often the first-call sequence
returns to a file it had left; the same for all functions. Run it once per checkout, with its own code:

    cd <checkout> && HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONPATH=<checkout>/src \
        python benchmarks/run_path/trace_run.py OUT.json ROOT paths.data_dir=<warm data dir>

``ROOT`` holds ``experiments`` (a link to the checkout's) and gets the run's outputs; give a data folder an earlier
untraced run prepared, so both checkouts trace the cache-hit path.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from types import FrameType

NOISE = ("<module>", "<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>", "<lambda>")


def reentries(files: list[str]) -> int:
    """How often the sequence enters a file it has been in before (after being elsewhere)."""
    count, seen, previous = 0, set(), None
    for name in files:
        if name != previous and name in seen:
            count += 1
        seen.add(name)
        previous = name
    return count


def entries(files: list[str]) -> dict[str, int]:
    """How often the sequence enters each file (from another file or at the start), most entered first."""
    counts: dict[str, int] = {}
    for k, name in enumerate(files):
        if k == 0 or files[k - 1] != name:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def main() -> None:
    out, root, *overrides = sys.argv[1:]
    import pneumollm

    package = str(Path(pneumollm.__file__).resolve().parent)
    first: list[tuple[str, str]] = []  # (file, qualname), in order of first call
    seen: set[tuple[str, str]] = set()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(package):
            key = (frame.f_code.co_filename[len(package) + 1:], frame.f_code.co_qualname)
            if key not in seen:
                seen.add(key)
                first.append(key)

    sys.argv = ["pneumollm-train", "--config-dir", str(Path(root) / "experiments"), "--config-name", "demo",
                "data.fold=0", f"paths.root_dir={root}/traced", "logger=none", *overrides]
    from pneumollm.cli.train import main as train

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        train()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    named = [(f, q) for f, q in first if not q.endswith(NOISE)]
    result = {
        "named_functions": len(named), "named_files": len({f for f, _ in named}),
        "named_file_reentries": reentries([f for f, _ in named]),
        "training_named_functions": sum(f.startswith("training/") for f, _ in named),
        "training_files": len({f for f, _ in first if f.startswith("training/")}),
        "all_functions": len(first), "all_files": len({f for f, _ in first}),
        "all_file_reentries": reentries([f for f, _ in first]),
        "named_entries": entries([f for f, _ in named]),
        "training_named": [f"{f}:{q}" for f, q in named if f.startswith("training/")],
        "files": list(dict.fromkeys(f for f, _ in first)),
    }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list | dict)}, indent=1))
    print("entered most:", dict(list(result["named_entries"].items())[:6]))


if __name__ == "__main__":
    main()
