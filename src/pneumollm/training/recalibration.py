"""Optional recalibration of P(class 1) on each fold's validation patients (``calibration=none|temperature|platt``).

Fitted on the validation films at the selected checkpoint (the predictions the validation threshold is chosen on),
never on the test fold, and applied to the log-odds z of every later prediction of that fold model:

- ``temperature``: z / T, T > 0 minimising the validation log-loss (scipy's ``minimize_scalar`` on log T). One
  parameter: an overconfident model gets T > 1, an underconfident one T < 1.
- ``platt``: a·z + b, the logistic regression of the validation labels on z (``logistic_recalibration``, the fit
  behind the calibration slope); also corrects the calibration-in-the-large.

The recalibrated P(class 1) is expit of the recalibrated log-odds; neither method ever reverses a fold model's
ranking, so each fold's AUC stays the same (a pooled AUC over folds may move: each fold has its own fit). Binary
task only (``check_calibration``). No usable fit exists where the validation log-odds separate the classes (the
log-loss has no finite minimum) or rank them the wrong way round or not at all (the fitted a or 1/T would be
<= 0): the identity is then kept and the record's ``note`` says why. The fit is recorded in ``metrics.json``
(``calibration``) and read back by prediction, export and external validation (``Recalibration.from_record``).
docs/tables.md, "Recalibration on validation patients".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from pneumollm.data.targets import BINARY, LabelTask
from pneumollm.errors import ConfigError
from pneumollm.training.calibration_metrics import logistic_recalibration, separated

CALIBRATION_METHODS = ("none", "temperature", "platt")
TEMPERATURE_BOUNDS = (1e-2, 1e2)  # T searched within (the wrong-way-round case is caught before the search)


def calibration_method(setting: Any) -> str:
    """The ``calibration`` setting checked: one of ``CALIBRATION_METHODS`` (None reads as ``none``)."""
    method = "none" if setting is None else str(setting)
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration={setting!r}: choose one of {', '.join(CALIBRATION_METHODS)} (none: the "
                          "model's own probabilities)")
    return method


def check_calibration(setting: Any, task: LabelTask, selection_split: str, validation_films: int) -> str:
    """Refuse a recalibration that cannot be fitted, before training: staged and multi-label tasks (their
    probabilities are several outputs, not one P(class 1)), and runs without validation patients apart from the test
    fold. Returns the method."""
    method = calibration_method(setting)
    if method == "none":
        return method
    if task.task != BINARY:
        raise ConfigError(f"calibration={method} recalibrates the one P(class 1) of a binary model; data.task="
                          f"{task.task} has {task.num_outputs} outputs: use calibration=none")
    if selection_split != "validation" or validation_films == 0:
        raise ConfigError(f"calibration={method} is fitted on validation patients apart from the test fold: set "
                          "data.selection_split=validation and data.val_fraction > 0")
    return method


def log_loss(labels: np.ndarray, z: np.ndarray) -> float:
    """Mean negative log-likelihood of the 0/1 labels under P = expit(z), from the log-odds (stable)."""
    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)))


@dataclass(frozen=True)
class Recalibration:
    """A fitted recalibration of the log-odds: ``temperature`` (z / T) or ``platt`` (a·z + b).

    ``note``: why the identity was kept, or what to know about the fit (None when nothing).
    """

    method: str
    temperature: float | None = None
    a: float | None = None
    b: float | None = None
    films: int = 0  # validation films it was fitted on
    log_loss_before: float | None = None
    log_loss_after: float | None = None
    note: str | None = None

    def log_odds(self, z: np.ndarray) -> np.ndarray:
        """The recalibrated log-odds of log-odds ``z`` (float64)."""
        z = np.asarray(z, dtype=np.float64)
        if self.method == "temperature":
            return z / float(self.temperature)  # type: ignore[arg-type]
        return float(self.a) * z + float(self.b)  # type: ignore[arg-type]

    def apply(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(recalibrated P(class 1), recalibrated log-odds) of log-odds ``z``, both float64."""
        recalibrated = self.log_odds(z)
        return expit(recalibrated), recalibrated

    def record(self) -> dict[str, Any]:
        """The ``calibration`` entry of metrics.json and export.json."""
        params = {"temperature": self.temperature} if self.method == "temperature" else {"a": self.a, "b": self.b}
        return {"method": self.method, **params, "films": self.films, "log_loss_before": self.log_loss_before,
                "log_loss_after": self.log_loss_after, "note": self.note}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> Recalibration | None:
        """The recalibration a ``calibration`` entry records; None for none (or a run made without one)."""
        if not record or record.get("method", "none") == "none":
            return None
        method = calibration_method(record["method"])
        if method == "temperature":
            return cls(method, temperature=float(record["temperature"]), films=int(record.get("films", 0)),
                       note=record.get("note"))
        return cls(method, a=float(record["a"]), b=float(record["b"]), films=int(record.get("films", 0)),
                   note=record.get("note"))


def fit_temperature(labels: np.ndarray, z: np.ndarray) -> float:
    """T > 0 minimising the log-loss of expit(z / T), searched on log T within ``TEMPERATURE_BOUNDS``."""
    from scipy.optimize import minimize_scalar

    low, high = np.log(TEMPERATURE_BOUNDS)
    found = minimize_scalar(lambda log_t: log_loss(labels, z / np.exp(log_t)), bounds=(low, high),
                            method="bounded", options={"xatol": 1e-10})
    return float(np.exp(found.x))


def fit_recalibration(method: str, labels: np.ndarray, z: np.ndarray) -> Recalibration:
    """Fit ``method`` (temperature or platt) on validation films' 0/1 labels and log-odds. Refused without both
    classes; the identity (T = 1, a = 1, b = 0), with a note, where the log-odds separate the classes or rank them
    the wrong way round (the fitted a or 1/T would be <= 0)."""
    y = np.asarray(labels).astype(int).reshape(-1)
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if len(np.unique(y)) < 2:
        raise ConfigError(f"calibration={method} needs validation patients of both classes; this fold's "
                          f"{len(y)} validation films have one: more patients or a larger data.val_fraction")
    before = log_loss(y, z)

    def identity(why: str) -> Recalibration:
        kept = {"temperature": 1.0} if method == "temperature" else {"a": 1.0, "b": 0.0}
        return Recalibration(method, **kept, films=len(y), log_loss_before=before, log_loss_after=before,
                             note=f"{why}: identity kept")

    if separated(y, z):
        return identity("the validation log-odds separate the classes (no finite fit)")
    wrong_way = "the model ranks the validation films the wrong way round or not at all"
    if method == "temperature":
        # d/ds of the log-loss of s·z at s = 0 is mean((1/2 - y)·z): not negative, the best s = 1/T is <= 0
        if float(np.mean((0.5 - y) * z)) >= 0:
            return identity(f"{wrong_way} (1/T would be <= 0)")
        fitted = Recalibration(method, temperature=fit_temperature(y, z))
    else:
        b, a = logistic_recalibration(y, z)
        if a <= 0:
            return identity(f"{wrong_way} (a = {a:.3g})")
        fitted = Recalibration(method, a=a, b=b)
    return Recalibration(fitted.method, fitted.temperature, fitted.a, fitted.b, len(y), before,
                         log_loss(y, fitted.log_odds(z)))
