"""Every choice of the suite's own config groups composes and instantiates (the model groups and the
comparison arms have their own tests: test_model_configs.py, test_arms_configs.py, test_sweeps.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from pneumollm.paths import conf_dir
from pneumollm.training.trainer import trainer_config
from tests.helpers import compose_train

CONF = conf_dir()


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def _compose(tmp_path: Path, *overrides: str):
    return compose_train([f"paths.root_dir={tmp_path}", *overrides], run_dir=tmp_path / "run")


@pytest.mark.parametrize("choice", _choices("data"))
def test_data_choices_instantiate_a_datamodule(tmp_path: Path, choice: str) -> None:
    extra = {"manifest": ["data.source.manifest=/x/m.csv"],
             "dicom_folder": ["data.source.folder=/x", "data.source.labels=/x/l.csv"]}.get(choice, [])
    cfg = _compose(tmp_path, f"data={choice}", *extra)
    datamodule = instantiate(cfg.data, _convert_="object")
    assert datamodule.fold == 0 and datamodule.num_folds == 5
    assert str(tmp_path) in str(datamodule.prepared_dir)


@pytest.mark.parametrize("choice", ["none", "threshold", "chexmask"])
def test_lung_choices_build_a_segmenter(tmp_path: Path, choice: str) -> None:
    from pneumollm.data.preprocess_plan import build_segmenter, preprocess_settings_from_config

    extra = ["lungs.csv=" + str(tmp_path / "masks.csv")] if choice == "chexmask" else []
    if choice == "chexmask":
        (tmp_path / "masks.csv").write_text("Image Index,Left Lung,Right Lung,Height,Width\n")
    cfg = _compose(tmp_path, f"lungs={choice}", *extra)
    segmenter = build_segmenter(preprocess_settings_from_config(cfg.data))
    assert callable(segmenter)
    assert 0.0 <= cfg.lungs.margin < 0.5


def test_every_lung_choice_is_covered() -> None:
    assert set(_choices("lungs")) == {"none", "threshold", "chexmask", "unet"}  # unet: tests/test_lungs_unet*.py


@pytest.mark.parametrize("choice", _choices("loss"))
def test_loss_choices_give_a_loss_and_probabilities(tmp_path: Path, choice: str) -> None:
    loss = instantiate(_compose(tmp_path, f"loss={choice}").loss)
    logits = torch.tensor([[2.0, -1.0], [-1.0, 3.0]])
    target = torch.tensor([0, 1])
    assert loss(logits, target).item() < loss(-logits, target).item()
    probs = loss.positive_probability(logits)
    assert probs[0] < 0.5 < probs[1]


@pytest.mark.parametrize("optimizer", _choices("optimizer"))
@pytest.mark.parametrize("scheduler", _choices("scheduler"))
def test_optimizer_and_scheduler_choices(tmp_path: Path, optimizer: str, scheduler: str) -> None:
    from pneumollm.training.optim import weight_decay_groups

    cfg = _compose(tmp_path, f"optimizer={optimizer}", f"scheduler={scheduler}")
    net = torch.nn.Linear(3, 2)
    opt = instantiate(cfg.optimizer)(weight_decay_groups(net, 0.02))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.02, 0.0]
    if cfg.get("scheduler"):
        sched = instantiate(cfg.scheduler)(opt, total_steps=100, steps_per_epoch=10)
        lrs = []
        for step in range(100):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step_update(num_updates=step + 1)  # as the LightningModule steps it
        assert lrs[0] == pytest.approx(5e-7) and max(lrs) == pytest.approx(cfg.optimizer.lr, rel=1e-3)
        assert lrs.index(max(lrs)) == 20 and lrs[-1] < 1e-5  # 2 warm-up epochs, then cosine down
        expected = [_reference_lr(t, 100, 20, cfg.optimizer.lr, 5e-7, 1e-7) for t in range(100)]
        assert lrs == pytest.approx(expected, rel=1e-12, abs=0)


def _reference_lr(step: int, total: int, warmup: int, base: float, warmup_lr: float, min_lr: float) -> float:
    """The reference code's schedule (METHOD.md): linear warm-up, then cosine to ``min_lr``."""
    import math

    if step < warmup:
        return warmup_lr + (base - warmup_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("choice", _choices("trainer"))
def test_trainer_choices(tmp_path: Path, choice: str) -> None:
    cfg = _compose(tmp_path, f"trainer={choice}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.precision == "bf16-mixed"
        pytest.skip(f"trainer={choice} composes; instantiating it needs a CUDA device")
    trainer = instantiate(trainer_config(cfg), logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("choice", _choices("logger"))
def test_logger_choices(tmp_path: Path, choice: str) -> None:
    cfg = _compose(tmp_path, f"logger={choice}")
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values()]
    assert len(loggers) == {"wandb": 2, "csv": 1, "none": 0}[choice]
    if choice == "wandb":
        assert loggers[0]._wandb_init["group"] == "default/pneumollm/tiny/demo"
        assert loggers[0]._wandb_init["job_type"] == "cv-fold"


def test_callbacks_and_paths_instantiate(tmp_path: Path) -> None:
    cfg = _compose(tmp_path)
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    assert {type(c).__name__ for c in callbacks} == {"ModelCheckpoint", "EarlyStopping", "RichProgressBar"}
    assert cfg.paths.results_dir == f"{tmp_path}/results"


@pytest.mark.parametrize("choice", _choices("debug"))
def test_debug_choices(tmp_path: Path, choice: str) -> None:
    cfg = _compose(tmp_path, f"debug={choice}")
    trainer = instantiate(trainer_config(cfg), logger=False, enable_checkpointing=False, accelerator="cpu")
    assert trainer is not None


@pytest.mark.parametrize("choice", _choices("size"))
def test_size_choices_pick_models_and_epochs(tmp_path: Path, choice: str) -> None:
    cfg = _compose(tmp_path, f"size={choice}")
    assert cfg.size_name == choice
    if choice == "full":
        assert cfg.encoder.name_or_path == "openai/clip-vit-large-patch14" and cfg.llm.pretrained
        assert cfg.trainer.max_epochs == 100 and cfg.trainer.accelerator == "gpu"
    else:
        assert cfg.encoder.architecture == "tiny" and cfg.llm.architecture == "tiny"


def test_local_default_and_slurm_launcher_compose(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for launcher, gpus in (("slurm", 1), ("slurm_ddp", 4)):
            cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
            assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
            assert cfg.hydra.launcher.gpus_per_node == gpus
    GlobalHydra.instance().clear()


def test_prepare_config_composes(tmp_path: Path) -> None:
    cfg = compose_train([f"paths.root_dir={tmp_path}", "qc=true"], run_dir=tmp_path, config_name="prepare")
    assert cfg.qc is True and cfg.data.source.kind == "demo"


def _output_dirs(tmp_path: Path, *overrides: str, config_name: str = "train",
                 config_dir: Path | None = None) -> tuple[str, str]:
    """(single-run folder, sweep folder) the Hydra app would use for these overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    extra = [f"hydra.searchpath=[file://{CONF}]"] if config_dir else []
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir or CONF)):
        cfg = compose(config_name, overrides=[f"paths.root_dir={tmp_path}", *extra, *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    GlobalHydra.instance().clear()
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


def test_output_folders_name_the_cohort_so_cohorts_never_mix(tmp_path: Path) -> None:
    run_dir, sweep_dir = _output_dirs(tmp_path)
    assert run_dir == f"{tmp_path}/outputs/default/demo/pneumollm/fold0"
    assert sweep_dir == f"{tmp_path}/outputs/default/demo"
    mine, _ = _output_dirs(tmp_path, "data=manifest", "data.source.manifest=/data/site a/manifest.csv")
    other, _ = _output_dirs(tmp_path, "data=manifest", "data.source.manifest=/data/site b/manifest.csv")
    assert mine.startswith(f"{tmp_path}/outputs/default/manifest-") and mine != other and "demo" not in mine


def test_debug_runs_write_into_their_own_folder(tmp_path: Path) -> None:
    for choice in _choices("debug"):
        run_dir, sweep_dir = _output_dirs(tmp_path, f"debug={choice}")
        assert run_dir == f"{tmp_path}/outputs/debug/{choice}/default/demo/pneumollm/fold0"
        assert sweep_dir.startswith(f"{tmp_path}/outputs/debug/{choice}/")


def test_paper_sweeps_keep_each_cohort_apart(tmp_path: Path) -> None:
    from pneumollm.paths import experiments_dir

    _, sweep_dir = _output_dirs(tmp_path, config_name="table6", config_dir=experiments_dir())
    assert sweep_dir == f"{tmp_path}/results/table6/demo/runs"
    _, debug_dir = _output_dirs(tmp_path, "debug=fdr", config_name="table6", config_dir=experiments_dir())
    assert debug_dir == f"{tmp_path}/results/debug/fdr/table6/demo/runs"


def test_cpu_threads_apply_to_cpu_training_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumollm.training.trainer import apply_cpu_threads

    before = torch.get_num_threads()
    try:
        assert apply_cpu_threads(_compose(tmp_path, "trainer=cpu", "trainer.cpu_threads=1")) == 1
        assert torch.get_num_threads() == 1
        assert apply_cpu_threads(_compose(tmp_path, "trainer=cpu", "trainer.cpu_threads=0")) is None
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert apply_cpu_threads(_compose(tmp_path, "trainer.cpu_threads=2")) is None  # auto picks the GPU
    finally:
        torch.set_num_threads(before)
    assert "cpu_threads" not in trainer_config(_compose(tmp_path))


def test_openmp_threads_wait_passively_unless_told_otherwise() -> None:
    import os
    import subprocess
    import sys

    code = "import pneumollm, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout == "PASSIVE\n"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout == "ACTIVE\n"
