"""Run folders written before the model configs changed shape (issue 24) stay readable.

The fixtures are ``config.yaml`` files saved by the suite at the commit before the change (tiny fold runs of
three arms: a timm arm under its old module path, PneumoLLM, and a CLIP arm; paths shortened to /data/old).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pneumollm.errors import ConfigError
from pneumollm.inference.models import build_net, load_trained
from pneumollm.models.saved_configs import current_net_config
from tests.helpers import compose_train

FIXTURES = Path(__file__).parent / "fixtures" / "configs_before_i24"
ARMS = sorted(p.stem for p in FIXTURES.glob("*.yaml"))

pytestmark = pytest.mark.usefixtures("tiny_cache_one_thread")  # tests/conftest.py


def _todays_net(arm: str, tmp_path: Path) -> torch.nn.Module:
    cfg = compose_train([f"paths.root_dir={tmp_path}", "logger=none", f"arm={arm}"], run_dir=tmp_path / "run")
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="object").eval()


@pytest.mark.parametrize("arm", ARMS)
def test_a_saved_config_builds_the_net_that_the_arm_builds_today(arm: str, tmp_path: Path) -> None:
    today = _todays_net(arm, tmp_path)
    state = {f"net.{k}": v for k, v in today.state_dict().items()}
    old, _ = build_net(OmegaConf.load(FIXTURES / f"{arm}.yaml"), state, tmp_path, torch.device("cpu"))
    assert type(old) is type(today)
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in today.state_dict().items()}
    images = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(old(images), today(images))


def test_an_old_run_folder_loads_for_prediction(tmp_path: Path) -> None:
    arm = "resnet50"
    run = tmp_path / "table2" / "runs" / arm / "fold0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text((FIXTURES / f"{arm}.yaml").read_text())
    (run / "metrics.json").write_text(json.dumps({"fold": 0, "threshold": 0.4, "checkpoint": "checkpoints/best.ckpt"}))
    today = _todays_net(arm, tmp_path)
    state = {f"net.{k}": v for k, v in today.state_dict().items()}
    torch.save({"state_dict": state}, run / "checkpoints" / "best.ckpt")
    model = load_trained(run)
    assert model.arm == arm and model.threshold == 0.4
    images = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        expected = torch.softmax(today(images), dim=1)[:, 1]
    torch.testing.assert_close(model.folds[0].probabilities(images), expected)


def test_a_model_entry_that_is_no_net_is_refused_with_how_to_rerun() -> None:
    with pytest.raises(ConfigError, match=r"old/config.yaml: .*re-run the fold"):
        current_net_config(OmegaConf.create({"name": "resnet50"}), "old/config.yaml")
