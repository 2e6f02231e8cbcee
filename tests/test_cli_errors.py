"""User errors end a run with one line and exit status 2; HYDRA_FULL_ERROR=1 shows the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pneumollm.errors import ConfigError, Interrupted, UserError, describe, find_user_error, user_errors_exit
from tests.helpers import make_toy_manifest, subprocess_env


def _train(tmp_path: Path, *overrides: str, full_error: bool = False,
           multirun: bool = False) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    command = [sys.executable, "-m", "pneumollm.cli.train", *(["-m"] if multirun else []), f"paths.root_dir={tmp_path}",
               "logger=none", "callbacks.progress=null", "data.progress=false", *overrides]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_bad_label_ends_with_one_error_line_and_status_2(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=6, size=40)
    manifest.write_text(manifest.read_text().replace("P001,normal", "P001,unsure"))
    result = _train(tmp_path, "data=manifest", f"data.source.manifest={manifest}")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "manifest.csv row 3, column 'label': unknown label value 'unsure'" in last
    assert "Traceback" not in result.stderr


def test_a_bad_setting_inside_instantiate_is_unwrapped(tmp_path: Path) -> None:
    result = _train(tmp_path, "data.fold=9", "data.num_folds=5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: data.fold=9 is outside 0..4"


def test_hydra_full_error_keeps_the_traceback(tmp_path: Path) -> None:
    result = _train(tmp_path, "data.fold=9", "data.num_folds=5", full_error=True)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_user_errors_are_found_behind_wrapping_exceptions() -> None:
    try:
        try:
            raise ConfigError("bad value")
        except ConfigError as inner:
            raise RuntimeError("Error in call to target") from inner
    except RuntimeError as outer:
        assert find_user_error(outer) is not None and describe(outer) == "bad value"
    assert find_user_error(RuntimeError("bug")) is None and describe(KeyError("k")) == "KeyError: 'k'"


def test_user_errors_exit_leaves_bugs_alone(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop, user_errors_exit():
        raise UserError("the cohort has no films")
    assert stop.value.code == 2 and capsys.readouterr().err == "error: the cohort has no films\n"
    with pytest.raises(ZeroDivisionError), user_errors_exit():
        _ = 1 / 0


def test_a_missing_required_path_is_named_in_one_line(tmp_path: Path) -> None:
    result = _train(tmp_path, "data=manifest")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: data.source.manifest is required")


def test_a_cohort_of_small_films_names_min_film_size_once_per_sweep(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "cohort", n_patients=6, size=40)
    single = _train(tmp_path, "data=manifest", f"data.source.manifest={manifest}", "data.num_folds=3")
    assert single.returncode == 2 and "Traceback" not in single.stderr
    last = single.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {manifest}: no usable film, all 6 skipped (6x smaller than the 64-pixel "
                           "minimum (data.min_film_size))")
    assert "data.min_film_size=40 admits the small films (the smallest is 40x40 pixels)" in last
    sweep = _train(tmp_path, "data=manifest", f"data.source.manifest={manifest}", "data.num_folds=3",
                   "data.fold=0,1,2", multirun=True)
    out = sweep.stdout + sweep.stderr
    assert sweep.returncode == 1, out[-3000:]
    assert out.count("data.min_film_size=40") == 1, out  # one line for the cohort, not one per fold
    assert out.count("the same error as pneumollm fold 0") == 2 and "3 job(s) of this sweep failed" in out
    assert "too few" not in out and "crop:" not in out and "Traceback" not in out


@pytest.mark.parametrize(("raised", "line"), [
    (KeyboardInterrupt(), "interrupted; run the same command again to resume"),
    (Interrupted("pneumollm fold 1: interrupted at epoch 3; run the same command again to resume"),
     "pneumollm fold 1: interrupted at epoch 3; run the same command again to resume"),
])
def test_ctrl_c_ends_the_console_script_with_one_line_and_status_130(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture,
                                                                     raised: KeyboardInterrupt, line: str) -> None:
    from pneumollm.cli import train

    def interrupted() -> None:
        raise raised

    monkeypatch.setattr(train, "app", interrupted)
    with pytest.raises(SystemExit) as stop:
        train.main()
    assert stop.value.code == 130 and capsys.readouterr().err == line + "\n"
