"""The sweep files of experiments/: every arm composes and builds, every sweep runs end to end for one step
per job on a two-fold toy cohort, and an interrupted sweep resumes without redoing finished jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from pneumollm.config import register_resolvers
from pneumollm.paths import conf_dir, experiments_dir
from tests.helpers import subprocess_env

SWEEPS = sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def _sweep_params(name: str) -> dict[str, str]:
    return yaml.safe_load((experiments_dir() / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]


def _arms(name: str) -> list[str]:
    return _sweep_params(name).get("arm", "").split(",") if "arm" in _sweep_params(name) else [""]


def test_every_table_and_figure_has_a_sweep_file() -> None:
    assert set(SWEEPS) >= {"table2", "table3", "table4", "table5", "table6", "fig6a", "fig6b", "demo"}


@pytest.mark.parametrize(("sweep", "arm"), [(s, a) for s in SWEEPS for a in _arms(s)])
def test_every_arm_of_every_sweep_composes_and_builds(sweep: str, arm: str) -> None:
    register_resolvers()
    GlobalHydra.instance().clear()
    overrides = [f"hydra.searchpath=[file://{conf_dir()}]"] + ([f"arm={arm}"] if arm else [])
    with initialize_config_dir(version_base="1.3", config_dir=str(experiments_dir())):
        cfg = compose(sweep, overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)  # the label reads hydra:runtime.choices, as in the app
    assert cfg.experiment.name == sweep
    if arm:
        assert cfg.experiment.arm == arm and cfg.experiment.label
    assert "data.fold" in cfg.hydra.sweeper.params
    net = instantiate(cfg.model, _convert_="object")  # the tiny size: small random models
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.fixture(scope="module")
def toy_manifest(toy_cohort) -> Path:
    return toy_cohort(n_patients=8, size=40)


def _toy_overrides(manifest: Path, root: Path) -> list[str]:
    return ["data=manifest", f"data.source.manifest={manifest}", "lungs=none", "data.num_folds=2",
            "data.val_fraction=0.25", "data.min_film_size=16", "data.progress=false", "data.preprocess_workers=1",
            "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "logger=none", "callbacks.progress=null",
            f"paths.root_dir={root}"]


def _run_sweep(sweep: str, root: Path, manifest: Path, *extra: str) -> subprocess.CompletedProcess:
    """The sweep through the console script (``-m``): Hydra's launcher, job folders, skipping, the exit status."""
    command = [
        sys.executable, "-m", "pneumollm.cli.train", "--config-dir", str(experiments_dir()), "--config-name", sweep,
        "-m", *_toy_overrides(manifest, root), "data.fold=0,1", *extra,
    ]
    env = subprocess_env()
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)


def _metrics(root: Path) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted(root.rglob("metrics.json"))}


def _run_sweep_in_process(sweep: str, root: Path, manifest: Path, jobs: list[list[str]]) -> None:
    """Every job of the sweep composed as Hydra's multirun composes it and run by the fold function in this
    process, into the folder Hydra's sweep would give it (no interpreter start per sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from pneumollm.training.run import run_fold

    register_resolvers()
    for job in jobs:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(experiments_dir())):
            cfg = compose(sweep, overrides=[f"hydra.searchpath=[file://{conf_dir()}]", *_toy_overrides(manifest, root),
                                            *job], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.run_dir = str(Path(cfg.hydra.sweep.dir) / cfg.hydra.sweep.subdir)
            del cfg["hydra"]
        run_fold(cfg)
    GlobalHydra.instance().clear()


def test_the_demo_sweep_runs_end_to_end_through_the_console_script(toy_manifest: Path, tmp_path: Path) -> None:
    result = _run_sweep("demo", tmp_path, toy_manifest)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = _metrics(tmp_path)
    assert len(metrics) == 2 and not list(tmp_path.rglob("failed.json"))
    assert {m["fold"] for m in metrics.values()} == {0, 1}


@pytest.mark.parametrize("sweep", [s for s in SWEEPS if s != "demo"])
def test_every_sweep_runs_one_step_per_job_on_a_two_fold_toy_cohort(sweep: str, toy_manifest: Path, tmp_path: Path,
                                                                     tiny_cache_one_thread) -> None:
    arms = [[f"arm={a}"] if a else [] for a in _arms(sweep)]
    if sweep == "fig6b":
        arms = [["token_engine.m=1"], ["token_engine.m=2"]]  # two of the eight m values keep it quick
    if sweep == "backbones":  # two of its 15 rows: Gemma-2's eager attention, BiomedCLIP's timm tower (the others
        arms = [["arm=backbone_gemma2_9b"], ["arm=backbone_biomedclip_b16"]]  # build above; test_backbone_rows.py)
    jobs = [[*arm, f"data.fold={fold}"] for arm in arms for fold in (0, 1)]
    _run_sweep_in_process(sweep, tmp_path, toy_manifest, jobs)
    metrics = _metrics(tmp_path)
    assert len(metrics) == len(jobs), sorted(map(str, metrics))
    assert not list(tmp_path.rglob("failed.json"))
    runs = tmp_path / "results" / sweep / "manifest-" if sweep != "demo" else None
    for path, m in metrics.items():
        assert m["experiment"] == sweep and m["fold"] in (0, 1)
        assert 0.0 <= m["test/auc"] <= 100.0
        assert str(path).startswith(str(runs)) and "/runs/" in str(path)  # where Hydra's sweep puts the job


def test_an_interrupted_sweep_resumes_without_redoing_finished_jobs(toy_manifest: Path, tmp_path: Path) -> None:
    first = _run_sweep("table4", tmp_path, toy_manifest)
    assert first.returncode == 0, first.stderr[-3000:]
    done = _metrics(tmp_path)
    victim = next(iter(done))
    victim.unlink()  # as if the sweep had been stopped before this job finished
    stamps = {p: p.stat().st_mtime_ns for p in done if p != victim}
    second = _run_sweep("table4", tmp_path, toy_manifest)
    assert second.returncode == 0, second.stderr[-3000:]
    assert victim.is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert second.stderr.count("skip") + second.stdout.count("skip") >= len(stamps)


def test_a_failing_job_is_recorded_the_sweep_goes_on_and_ends_with_a_summary(toy_manifest: Path,
                                                                             tmp_path: Path) -> None:
    # fold 1 of a 2-fold split exists, fold 7 does not: that job fails, the others finish
    result = _run_sweep("table4", tmp_path, toy_manifest, "data.fold=0,7")
    assert result.returncode == 1, result.stderr[-3000:]
    failed = list(tmp_path.rglob("failed.json"))
    assert len(failed) == 2 and all("fold7" in str(p) for p in failed)
    assert json.loads(failed[0].read_text())["error"] == "data.fold=7 is outside 0..1"
    assert len(_metrics(tmp_path)) == 2
    summary = result.stderr[result.stderr.index("2 job(s) of this sweep failed"):]
    assert all(f"{p.parent.parent.name}/fold7" in summary for p in failed) and "Traceback" not in summary
    # the same error of two jobs is printed once, by the first; the other job and the summary point to it
    assert (result.stdout + result.stderr).count("data.fold=7 is outside 0..1") == 1
    assert "the same error as" in result.stderr and "the error printed above for" in summary


def test_every_arm_config_belongs_to_a_sweep() -> None:
    arms = {p.stem for p in (conf_dir() / "arm").glob("*.yaml")}
    swept = {arm for sweep in SWEEPS for arm in _arms(sweep) if arm}
    assert arms == swept, (f"arms without a sweep: {sorted(arms - swept)}; "
                           f"unknown arms in sweeps: {sorted(swept - arms)}")


@pytest.mark.slow
def test_two_sweeps_into_one_folder_at_once_train_each_job_once(toy_manifest: Path, tmp_path: Path) -> None:
    def start() -> subprocess.Popen:
        command = [sys.executable, "-m", "pneumollm.cli.train", "--config-dir", str(experiments_dir()),
                   "--config-name", "table4", "-m", "data=manifest", f"data.source.manifest={toy_manifest}",
                   "lungs=none", "data.num_folds=2", "data.fold=0,1", "data.val_fraction=0.25",
                   "data.min_film_size=16", "data.progress=false", "data.preprocess_workers=1",
                   "trainer.max_epochs=3", "logger=none", "callbacks.progress=null", f"paths.root_dir={tmp_path}"]
        env = subprocess_env()
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    first, second = start(), start()
    outputs = [p.communicate(timeout=900) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [err[-2000:] for _, err in outputs]
    logs = "".join(out + err for out, err in outputs)
    metrics = _metrics(tmp_path)
    assert len(metrics) == 4 and not list(tmp_path.rglob("failed.json"))
    trained = logs.count("-> ")  # each finished training prints "<metrics>  -> <run dir>" once
    assert trained == 4, logs[-4000:]
    assert not list(tmp_path.rglob(".superseded"))  # neither sweep took the other's folders for stale ones
