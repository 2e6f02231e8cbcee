"""The pooled AUC, one implementation for summaries, tables, intervals and external validation."""

from __future__ import annotations

import numpy as np


def pooled_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC (percent) of predictions pooled together (ties count half); NaN when one class is absent.

    scikit-learn, imported here: a summary needs nothing heavier (no torch), so ``pneumollm-aggregate`` starts fast.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(probs, dtype=np.float64))) * 100
