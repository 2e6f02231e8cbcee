"""The figures of stored predictions, for the analysis layer: the one implementation of
``training.prediction_metrics`` (which also gives each run's ``metrics.json``), re-exported here so that summaries,
tables, intervals, subgroups and external validation compute every figure the same way."""

from __future__ import annotations

import numpy as np

from pneumollm.training.prediction_metrics import (  # noqa: F401  (re-exported)
    BINARY_METRICS,
    auc_percent,
    binary_metrics,
    prediction_metrics,
    stage_confusion,
    task_metrics,
)


def pooled_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC (percent) of predictions pooled together (ties count half); NaN when one class is absent."""
    return auc_percent(labels, probs)
