"""Multi-label classification: one binary model per class, behind one estimator.

Any family's pipeline (TF-IDF text, vectors, numbers) becomes multi-label by fitting a clone of
it per label column of a ``[N, classes]`` target; the fitted per-class pipelines export to ONNX
one by one and are merged into one graph (mlsd.export.multilabel_graph).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class OneModelPerLabel:
    """Fit one clone of ``estimator`` per column of a 0/1 target matrix.

    Estimator-shaped: ``__init__`` stores, ``fit`` learns ``estimators_`` (one fitted pipeline per
    class, in column order).
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, x: Any, y: np.ndarray) -> OneModelPerLabel:
        """Fit a clone of the estimator on each label column.

        Raises:
            ValueError: the target is not 2-D, or a label column holds one class only.
        """
        from sklearn.base import clone

        target = np.asarray(y)
        if target.ndim != 2:
            raise ValueError(f"a multi-label target is [rows, classes]; got shape {target.shape}")
        single = [j for j in range(target.shape[1]) if len(np.unique(target[:, j])) < 2]
        if single:
            raise ValueError(
                f"label columns {single} hold one class only in these rows; a classifier needs both"
            )
        self.estimators_ = [clone(self.estimator).fit(x, target[:, j]) for j in range(target.shape[1])]
        return self

    def predict_score(self, x: Any) -> np.ndarray:
        """P(label = 1) of every class, ``[N, classes]`` float64."""
        if not hasattr(self, "estimators_"):
            raise ValueError("OneModelPerLabel is not fitted; call fit(x, y) first")
        return np.column_stack([e.predict_proba(x)[:, 1] for e in self.estimators_]).astype(np.float64)


def multilabel(model: Any, target: np.ndarray) -> Any:
    """``model`` as it fits ``target``: wrapped in :class:`OneModelPerLabel` for a 2-D target."""
    return OneModelPerLabel(model) if np.ndim(target) == 2 else model


def scores_of(model: Any, x: Any) -> np.ndarray:
    """A fitted model's scores: ``[N, classes]`` for a multi-label model, else P(label = 1) ``[N]``."""
    if isinstance(model, OneModelPerLabel):
        return model.predict_score(x)
    return np.asarray(model.predict_proba(x)[:, 1])
