"""The console messages of issue 23, captured from the console scripts of one checkout.

Runs each situation the issue names (a cohort whose films are all too small, an empty manifest, a folder given as
the manifest, Windows paths, an unknown label column, a rerun after a failed attempt, Ctrl-C and the rerun, one
fold's console with W&B offline, aggregating twice, the predict inputs, comparing two arms of one study) with
``python -m pneumollm.cli.<script>`` of the checkout whose ``src`` folder is given, and writes what each printed
(progress bars dropped) and its exit status to a JSON file. Run it once per checkout and compare the two files:

    .venv/bin/python benchmarks/messages/run.py --src /tmp/before/src --work /tmp/msg_before --out before.json
    .venv/bin/python benchmarks/messages/run.py --src src --work /tmp/msg_after --out after.json

The cohorts are written with this checkout's test helpers; the script itself needs nothing else of either one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import make_toy_manifest  # noqa: E402  (this checkout's cohort writer)

TOY = ["data=manifest", "lungs=none", "model=timm_resnet18", "trainer=cpu", "data.image_size=32",
       "data.progress=false", "data.preprocess_workers=1", "data.num_folds=3", "data.batch_size=8",
       "callbacks.progress=null", "model.model_name=test_resnet", "trainer.max_epochs=2"]
SMALL_OK = "data.min_film_size=16"


class Console:
    def __init__(self, src: Path, work: Path) -> None:
        self.work = work
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
                    "PYTHONPATH": os.pathsep.join([str(src.resolve()), str(REPO)])}  # REPO: tests.helpers
        self.env.pop("WANDB_SILENT", None)  # a user's shell: make sets it, the console scripts must not need it
        for name in ("COLUMNS", "LINES"):  # output captured as into a log file, not a terminal
            self.env.pop(name, None)

    def command(self, script: str, *args: str) -> list[str]:
        return [sys.executable, "-m", f"pneumollm.cli.{script}", *args]

    def run(self, script: str, *args: str, timeout: int = 600) -> dict:
        started = time.time()
        done = subprocess.run(self.command(script, *args), cwd=self.work, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        return record(done.returncode, done.stdout, done.stderr, time.time() - started)


def shown(text: str) -> list[str]:
    """The lines a user reads: progress bars and blank lines dropped."""
    return [line.rstrip() for line in text.splitlines()
            if line.strip() and "━" not in line and "it/s" not in line and not line.startswith("Epoch ")]


def record(code: int, out: str, err: str, seconds: float) -> dict:
    """Exit status, line counts over the whole output, and its last 40 lines per stream."""
    lines = shown(out) + shown(err)
    return {"exit": code, "seconds": round(seconds, 1), "lines": len(lines),
            "wandb_lines": sum(line.startswith("wandb:") for line in lines),
            "lightning_lines_again_through_hydra": sum("][lightning" in line for line in lines),
            "crop_lines": sorted({line for line in lines if line.startswith("cohort crop")}),
            "widest_line": max((len(line) for line in lines), default=0),
            "widest_rule": max((len(line) for line in lines if line.lstrip().startswith("─" * 4)), default=0),
            "stdout": shown(out)[-40:], "stderr": shown(err)[-40:]}


def train(console: Console, run_dir: Path, manifest: Path, *extra: str) -> dict:
    return console.run("train", *TOY, f"data.source.manifest={manifest}", f"paths.root_dir={console.work}",
                       f"hydra.run.dir={run_dir}", "logger=none", *extra)


def manifests(work: Path) -> dict[str, Path]:
    """The toy cohort and the broken manifests made from it."""
    good = make_toy_manifest(work / "cohort", n_patients=18, films_per_patient=2, size=40)
    text = good.read_text()
    out = {"good": good}

    def write(name: str, content: str | bytes) -> None:
        path = work / "cohort" / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        out[name] = path

    write("empty.csv", "")
    write("header_only.csv", text.splitlines()[0] + "\n")
    write("backslash.csv", text.replace("films/", "films\\"))
    write("reading_column.csv", text.replace("path,patient_id,label", "path,patient_id,reading", 1))
    write("bad_label.csv", text.replace(",normal\n", ",unsure\n", 1))
    first = text.splitlines()[1]
    write("duplicated.csv", text.splitlines()[0] + "\n" + first + "\n" + first + "\n")
    shutil.copy(work / "cohort" / first.split(",")[0], work / "cohort" / "films" / "r\u00e9sum\u00e9.png")
    write("cp1252.csv", ("path,patient_id,label\nfilms/r\u00e9sum\u00e9.png,PX,normal\n").encode("cp1252"))
    folder = work / "cohort" / "folder"
    folder.mkdir(exist_ok=True)
    from PIL import Image

    Image.open(work / "cohort" / first.split(",")[0]).convert("L").save(folder / "film_without_extension", "JPEG")
    shutil.copy(work / "cohort" / first.split(",")[0], folder / "film.png")
    return out


def wait_for_epoch(last: Path, proc: subprocess.Popen, epoch: int) -> None:
    import torch

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if torch.load(last, weights_only=True, map_location="cpu")["epoch"] >= epoch:
                return
        except (OSError, RuntimeError, EOFError, KeyError):
            pass
        time.sleep(0.2)


def ctrl_c(console: Console, manifest: Path) -> dict:
    run_dir = console.work / "interrupted"
    hold = console.work / "hold"
    hold.touch()
    args = [*TOY, f"data.source.manifest={manifest}", SMALL_OK, f"paths.root_dir={console.work}",
            f"hydra.run.dir={run_dir}", "logger=none", "trainer.max_epochs=4",
            f"+callbacks.hold={{_target_: tests.helpers.SlowEpochs, seconds: 0, hold: '{hold}'}}"]
    started = time.time()
    proc = subprocess.Popen(console.command("train", *args), cwd=console.work, env=console.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epoch(run_dir / "checkpoints" / "last.ckpt", proc, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    hold.unlink()
    interrupted = record(proc.returncode, out, err, time.time() - started)
    rerun = console.run("train", *args)
    return {"interrupted": interrupted, "rerun": rerun}


def predict_cases(console: Console, model: Path, m: dict[str, Path]) -> dict:
    cases = {"missing_input": [str(console.work / "no_such_folder")], "header_only": [str(m["header_only.csv"])],
             "cp1252_manifest": [str(m["cp1252.csv"])], "duplicated_rows": [str(m["duplicated.csv"])],
             "folder_with_extensionless_jpeg": [str(console.work / "cohort" / "folder")]}
    results = {}
    for name, inputs in cases.items():
        out = console.work / f"predict_{name}.csv"
        result = console.run("predict", str(model), *inputs, "--out", str(out), "--no-progress")
        result["rows_written"] = len(out.read_text().splitlines()) - 1 if out.is_file() else None
        results[name] = result
    return results


def compare_cases(console: Console) -> dict:
    """A study of two arms written with this checkout's test fakes, compared with the checkout under test."""
    from tests.test_tables_csv import fake_table6

    from pneumollm.analysis.report import aggregate_table

    study = console.work / "two_arms"
    fake_table6(study / "runs", {"baseline": 0.0, "pneumollm": 5.0})
    aggregate_table(study / "runs", study, "table6", reference="baseline", num_folds=3, n_boot=50, use_wandb=False)
    return {"arm_folders": console.run("compare", str(study / "runs" / "baseline"), str(study / "runs" / "pneumollm")),
            "study_and_arms": console.run("compare", str(study), "--arms", "baseline,pneumollm"),
            "study_alone": console.run("compare", str(study))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="the src/ folder of the checkout to run")
    parser.add_argument("--work", type=Path, required=True, help="an empty scratch folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    console = Console(args.src, args.work)
    m = manifests(args.work)
    good = m["good"]
    results: dict[str, object] = {"src": str(args.src.resolve())}

    results["all_films_too_small"] = console.run(
        "train", "-m", *TOY, f"data.source.manifest={good}", f"paths.root_dir={args.work}", "logger=none",
        "data.fold=0,1,2", f"hydra.sweep.dir={args.work}/too_small")
    for name in ("empty.csv", "header_only.csv", "backslash.csv", "reading_column.csv"):
        results[f"train_{name}"] = train(console, args.work / f"run_{name}", m[name], SMALL_OK)
    results["train_folder_as_manifest"] = train(console, args.work / "run_folder", args.work / "cohort", SMALL_OK)

    failed_dir = args.work / "after_failure"
    results["failed_attempt"] = train(console, failed_dir, m["bad_label.csv"], SMALL_OK)
    results["rerun_after_failed_attempt"] = train(console, failed_dir, good, SMALL_OK)
    results["ctrl_c"] = ctrl_c(console, good)

    study = args.work / "study"
    run = console.run("train", "-m", *TOY, f"data.source.manifest={good}", SMALL_OK, f"paths.root_dir={args.work}",
                      "logger=wandb", "data.fold=0,1,2", f"hydra.sweep.dir={study}/timm_resnet18",
                      "hydra.sweep.subdir=fold${data.fold}")
    logs = sorted(log for log in study.rglob("*.log") if "wandb" not in log.parts)  # the suite's own logs
    results["three_folds_console"] = {
        **run, "widest_log_line": max((len(line) for log in logs for line in log.read_text().splitlines()),
                                      default=0)}
    first = console.run("aggregate", str(study), "--num-folds", "3", "--no-wandb")
    second = console.run("aggregate", str(study), "--num-folds", "3", "--no-wandb")
    for result in (first, second):
        result["written_or_kept"] = [line for line in result["stdout"] + result["stderr"]
                                     if "written" in line or "kept" in line]
    several = args.work / "several_studies"
    for name in ("a", "b"):
        shutil.copytree(study, several / name, ignore=shutil.ignore_patterns("wandb"))
    results["aggregate_several_studies"] = console.run("aggregate", str(several), "--num-folds", "3", "--no-wandb")
    summary = study / "summary.md"
    results["aggregate_first"], results["aggregate_again"] = first, second
    results["summary_title"] = summary.read_text().splitlines()[0] if summary.is_file() else None
    results["predict"] = predict_cases(console, study / "timm_resnet18" / "fold0", m)
    results["compare"] = compare_cases(console)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
