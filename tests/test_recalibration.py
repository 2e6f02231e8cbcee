"""Recalibration on validation patients (``calibration=temperature|platt``): the fits against direct computations,
what they do to calibrated and overconfident models, the setting's checks, and the config hash."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from pneumollm.data.targets import MULTICLASS, LabelTask
from pneumollm.errors import ConfigError
from pneumollm.training.calibration_metrics import calibration_metrics
from pneumollm.training.prediction_metrics import auc_percent
from pneumollm.training.recalibration import (
    Recalibration,
    calibration_method,
    check_calibration,
    fit_recalibration,
    fit_temperature,
    log_loss,
)
from pneumollm.training.records import config_hash


def _films(n: int, scale: float, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, model log-odds) of ``n`` films whose true log-odds u ~ N(0, 1.5): the model says scale * u + shift."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 1.5, n)
    return (rng.random(n) < expit(u)).astype(int), scale * u + shift


def test_the_temperature_is_the_root_of_the_log_loss_derivative() -> None:
    from scipy.optimize import brentq

    labels, z = _films(400, 2.5, seed=1)
    # d/ds mean log-loss(s * z) = mean((expit(s z) - y) z): zero at s = 1 / T
    s = brentq(lambda s: float(np.mean((expit(s * z) - labels) * z)), 1e-3, 10.0, xtol=1e-14)
    assert fit_temperature(labels, z) == pytest.approx(1 / s, rel=1e-6)
    fitted = fit_recalibration("temperature", labels, z)
    assert fitted.temperature == pytest.approx(1 / s, rel=1e-6)
    assert fitted.log_loss_after < fitted.log_loss_before and fitted.films == 400 and fitted.note is None


def test_platt_is_the_logistic_regression_of_the_labels_on_the_log_odds() -> None:
    from scipy.optimize import minimize

    labels, z = _films(400, 2.5, shift=1.0, seed=2)
    direct = minimize(lambda ab: log_loss(labels, ab[0] * z + ab[1]), x0=[1.0, 0.0], method="BFGS",
                      options={"gtol": 1e-10}).x
    fitted = fit_recalibration("platt", labels, z)
    assert (fitted.a, fitted.b) == pytest.approx(tuple(direct), abs=1e-4)
    p, recalibrated = fitted.apply(z)
    assert np.allclose(recalibrated, fitted.a * z + fitted.b) and np.allclose(p, expit(fitted.a * z + fitted.b))


def test_a_calibrated_model_is_left_nearly_as_it_is() -> None:
    labels, z = _films(20000, 1.0, seed=3)
    assert fit_recalibration("temperature", labels, z).temperature == pytest.approx(1.0, abs=0.05)
    platt = fit_recalibration("platt", labels, z)
    assert platt.a == pytest.approx(1.0, abs=0.05) and platt.b == pytest.approx(0.0, abs=0.05)


def test_an_overconfident_model_is_cooled_and_its_test_calibration_improves() -> None:
    val_labels, val_z = _films(600, 3.0, shift=1.5, seed=4)  # too extreme and too high
    test_labels, test_z = _films(600, 3.0, shift=1.5, seed=5)
    before = calibration_metrics(test_labels, expit(test_z), test_z)
    temperature = fit_recalibration("temperature", val_labels, val_z)
    assert temperature.temperature > 2
    platt = fit_recalibration("platt", val_labels, val_z)
    assert platt.a == pytest.approx(1 / 3, abs=0.1) and platt.b == pytest.approx(-0.5, abs=0.25)
    for fitted in (temperature, platt):
        p, z = fitted.apply(test_z)  # fitted on the validation films, applied to the test films
        after = calibration_metrics(test_labels, p, z)
        assert after["brier"] < before["brier"] and after["ece"] < before["ece"] / 2, fitted.method
        assert abs(after["calibration_slope"] - 1) < abs(before["calibration_slope"] - 1)
        assert auc_percent(test_labels, p) == pytest.approx(auc_percent(test_labels, expit(test_z)))  # same ranking


def test_separating_or_one_class_validation_films() -> None:
    labels, z = np.array([0, 0, 1, 1]), np.array([-2.0, -1.0, 1.0, 3.0])
    for method, identity in (("temperature", {"temperature": 1.0}), ("platt", {"a": 1.0, "b": 0.0})):
        fitted = fit_recalibration(method, labels, z)
        assert {k: getattr(fitted, k) for k in identity} == identity and "separate the classes" in fitted.note
        assert np.array_equal(fitted.apply(z)[1], z)
    with pytest.raises(ConfigError, match="validation patients of both classes"):
        fit_recalibration("platt", np.array([1, 1, 1]), np.array([0.1, 0.5, 2.0]))


def test_a_model_ranking_validation_films_the_wrong_way_round_is_never_reversed() -> None:
    labels, z = _films(300, -1.0, seed=6)
    for method in ("platt", "temperature"):
        fitted = fit_recalibration(method, labels, z)
        assert "wrong way round" in fitted.note and np.array_equal(fitted.apply(z)[1], z), method


def test_the_record_reads_back() -> None:
    labels, z = _films(200, 2.0, seed=7)
    for method in ("temperature", "platt"):
        fitted = fit_recalibration(method, labels, z)
        again = Recalibration.from_record(fitted.record())
        assert np.array_equal(again.apply(z)[0], fitted.apply(z)[0]) and again.record()["method"] == method
    assert Recalibration.from_record(None) is None and Recalibration.from_record({"method": "none"}) is None


def test_the_setting_is_checked() -> None:
    binary = LabelTask()
    assert calibration_method(None) == "none" and check_calibration("platt", binary, "validation", 5) == "platt"
    with pytest.raises(ConfigError, match="choose one of none, temperature, platt"):
        calibration_method("isotonic")
    with pytest.raises(ConfigError, match="binary model"):
        check_calibration("temperature", LabelTask(task=MULTICLASS, classes=("0", "1", "2", "3")), "validation", 5)
    for split, films in (("test_fold_reference", 5), ("validation", 0)):
        with pytest.raises(ConfigError, match="apart from the test fold"):
            check_calibration("platt", binary, split, films)
    assert check_calibration("none", LabelTask(task=MULTICLASS, classes=("0", "1")), "test_fold_reference", 0) == "none"


def test_the_config_hash_includes_calibration_but_none_keeps_the_hash_of_before() -> None:
    before = {"seed": 20, "threshold": 0.5, "model": {"name": "x"}}
    assert config_hash({**before, "calibration": "none"}) == config_hash(before)
    assert config_hash({**before, "calibration": "platt"}) != config_hash(before)
    assert config_hash({**before, "calibration": "temperature"}) != config_hash({**before, "calibration": "platt"})
