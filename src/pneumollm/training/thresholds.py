"""The decision threshold: the configured P(pneumoconiosis) cut-off (0.5), or one chosen on each fold's validation
patients by Youden's J (``threshold=validation``), never on the test fold. The optional recalibration
(``calibration=temperature|platt``, ``training.recalibration``) is fitted on the same validation predictions, first:
the validation threshold is then chosen on the recalibrated probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pneumollm.errors import ConfigError
from pneumollm.training.recalibration import calibration_method, fit_recalibration
from pneumollm.utils.console import say

if TYPE_CHECKING:
    import lightning as L

    from pneumollm.data.datamodule import CohortDataModule
    from pneumollm.training.module import ClassificationModule

THRESHOLD_MODES = ("fixed", "validation")


def threshold_mode(setting: float | str) -> tuple[str, float]:
    """(mode, fixed value) of the ``threshold`` setting: a number, or ``validation`` (0.5 stays the fixed one)."""
    if str(setting) == "validation":
        return "validation", 0.5
    try:
        value = float(setting)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold={setting!r}: give a number in (0, 1) or 'validation'") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"threshold={value}: the cut-off on P(pneumoconiosis) must lie in (0, 1)")
    return "fixed", value


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """The cut-off maximising Youden's J (sensitivity + specificity - 1) on these films, for calls ``prob > t``;
    None when one class is absent. Ties of J go to the highest cut-off (the fewest positive calls).

    scikit-learn's ROC thresholds call ``prob >= t`` positive; the returned value lies halfway between the chosen
    score and the next lower one, so that ``prob > t`` makes the same calls.
    """
    from sklearn.metrics import roc_curve

    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        return None
    fpr, tpr, cuts = roc_curve(labels, probs, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))  # the first maximum: cut-offs decrease along the curve
    chosen = float(min(cuts[best], 1.0))
    lower = probs[probs < chosen]
    return float((chosen + lower.max()) / 2) if lower.size else float(np.nextafter(chosen, 0.0))


def choose_threshold(setting: float | str, tester: L.Trainer, module: ClassificationModule,
                     datamodule: CohortDataModule, checkpoint: str | None, calibration: str = "none"
                     ) -> dict[str, Any]:
    """Record the validation patients' Youden threshold for the tested checkpoint and set the one the test uses;
    with ``calibration`` (temperature or platt) first fit the recalibration on the same validation predictions and
    set it for the test too (the Youden threshold is then that of the recalibrated probabilities).

    With ``threshold=validation`` the test (metrics and each prediction's ``pred``) uses the validation one; it is
    refused where the validation films are the test fold (``data.selection_split=test_fold_reference``) or lack a
    class. Returns both cut-offs and which was used, and the fitted recalibration (``calibration``, only when one
    was asked for), for metrics.json.
    """
    mode, fixed = threshold_mode(setting)
    method = calibration_method(calibration)
    chosen, recalibration = None, None
    if datamodule.selection_split == "validation" and len(datamodule.datasets.get("val", [])) > 0:
        module.collect_validation = True
        try:
            tester.validate(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
        finally:
            module.collect_validation = False
        labels, probs, log_odds = module.validation_predictions()
        if method != "none":
            recalibration = fit_recalibration(method, labels, log_odds)
            probs = recalibration.apply(log_odds)[0]
            if recalibration.note:
                say(f"[yellow]calibration={method}:[/yellow] {recalibration.note}")
        chosen = youden_threshold(labels, probs)
    if mode == "validation" and chosen is None:
        raise ConfigError("threshold=validation needs validation patients of both classes, apart from the test fold "
                          "(data.selection_split=validation, data.val_fraction > 0)")
    if method != "none" and recalibration is None:
        raise ConfigError(f"calibration={method} needs validation patients apart from the test fold "
                          "(data.selection_split=validation, data.val_fraction > 0)")
    used = chosen if mode == "validation" else fixed
    module.use_test_threshold(used)
    module.use_recalibration(recalibration)
    # unrounded: the calls in predictions.csv (prob > threshold) must follow from the recorded cut-off
    recorded = {"calibration": recalibration.record()} if recalibration is not None else {}
    return {"threshold": used, "threshold_mode": mode, "threshold_fixed": fixed, "threshold_validation": chosen,
            **recorded}
