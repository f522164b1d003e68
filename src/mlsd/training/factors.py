"""Recommenders as factor tables: implicit-feedback ALS and the popularity baseline.

Both fit on (user, item, count) interactions and end as the same state: user factors, item
factors and a cold-start row, so one ONNX graph (id lookup, MatMul, TopK) serves either. The
cold-start row scores items by popularity: every model carries one extra factor dimension that is
0 for known users and 1 for the cold row, with the items' popularity in it, so an unknown user
gets the most played items and a known user's scores are the model's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse

from mlsd.errors import SpecError, TrainingError


class Interactions:
    """Summed counts per (user, item) as a CSR matrix, with the ids of its rows and columns."""

    def __init__(self, users: np.ndarray, items: np.ndarray, counts: np.ndarray) -> None:
        self.user_ids, user_idx = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
        self.item_ids, item_idx = np.unique(np.asarray(items, dtype=np.int64), return_inverse=True)
        shape = (len(self.user_ids), len(self.item_ids))
        matrix = sparse.coo_matrix((np.asarray(counts, dtype=np.float64), (user_idx, item_idx)), shape=shape)
        self.matrix = matrix.tocsr()  # duplicates are summed
        self.matrix.sum_duplicates()

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, user: str, item: str, count: str) -> Interactions:
        """Interactions of a frame's ``user``, ``item`` and ``count`` columns.

        Raises:
            TrainingError: the frame is empty or a count is negative.
        """
        if frame.empty:
            raise TrainingError("no interactions to fit on: the training span holds no rows")
        if (frame[count] < 0).any():
            raise TrainingError(f"column {count!r} has negative counts; implicit feedback must be >= 0")
        return cls(frame[user].to_numpy(), frame[item].to_numpy(), frame[count].to_numpy())


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ALSParams(_Params):
    """Hyper-parameters of implicit ALS (the spec's ``model.params`` and search space)."""

    factors: int = Field(default=16, ge=1, le=512)
    regularization: float = Field(default=0.1, ge=0)
    alpha: float = Field(default=2.0, gt=0, description="confidence = 1 + alpha * count")
    iterations: int = Field(default=10, ge=1, le=200)


class FactorModel:
    """Fitted state shared by every recommender: ids, factors and the cold-start row.

    Attributes (after ``fit``): ``user_ids_`` ``[U]``, ``user_factors_`` ``[U, f + 1]``, ``item_ids_``
    ``[I]``, ``item_factors_`` ``[I, f + 1]`` and ``cold_user_`` ``[f + 1]``.
    """

    user_ids_: np.ndarray
    user_factors_: np.ndarray
    item_ids_: np.ndarray
    item_factors_: np.ndarray
    cold_user_: np.ndarray

    def fit(self, data: Interactions) -> FactorModel:
        """Learn the factors from ``data``; returns self."""
        raise NotImplementedError

    def _set(self, data: Interactions, users: np.ndarray, items: np.ndarray) -> None:
        counts = np.asarray(data.matrix.sum(axis=0)).ravel()
        popularity = counts / counts.sum()
        self.user_ids_, self.item_ids_ = data.user_ids, data.item_ids
        self.user_factors_ = np.hstack([users, np.zeros((len(users), 1))]).astype(np.float32)
        self.item_factors_ = np.hstack([items, popularity[:, None]]).astype(np.float32)
        self.cold_user_ = np.zeros(self.user_factors_.shape[1], dtype=np.float32)
        self.cold_user_[-1] = 1.0

    def _check_fitted(self) -> None:
        if not hasattr(self, "item_factors_"):
            raise TrainingError(f"{type(self).__name__} is not fitted yet; call fit() first")

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Each user's factor row ``[N, f + 1]``; unknown users get the cold-start row."""
        self._check_fitted()
        index = pd.Index(self.user_ids_).get_indexer(np.asarray(user_ids, dtype=np.int64))
        table = np.vstack([self.user_factors_, self.cold_user_])
        return table[np.where(index < 0, len(self.user_ids_), index)]

    def scores(self, user_ids: np.ndarray) -> np.ndarray:
        """Every item's score for every user, ``[N, I]`` float32 (items in ``item_ids_`` order)."""
        return self.user_rows(user_ids) @ self.item_factors_.T

    def exact_scores(self, user_ids: np.ndarray) -> np.ndarray:
        """:meth:`scores` multiplied in float64 and rounded to float32: the same numbers as an
        ONNX graph that does the same (float32 products depend on the summation order, and a
        ranker's tree splits on these scores)."""
        rows = self.user_rows(user_ids).astype(np.float64)
        return (rows @ self.item_factors_.T.astype(np.float64)).astype(np.float32)

    def recommend(self, user_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` item ids and their scores per user, best first (``[N, k]`` each)."""
        scores = self.scores(user_ids)
        k = min(k, scores.shape[1])
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return self.item_ids_[top], np.take_along_axis(scores, top, axis=1)


class Popularity(FactorModel):
    """Everyone gets the most played items: no user factors, only the popularity column."""

    def __init__(self) -> None:
        pass

    def fit(self, data: Interactions) -> Popularity:
        n_users, n_items = data.matrix.shape
        self._set(data, np.zeros((n_users, 0)), np.zeros((n_items, 0)))
        self.user_factors_[:, -1] = 1.0  # known users are scored like cold ones
        return self


class ItemKNN(FactorModel):
    """Item-item collaborative filtering: an item scores by its cosine similarity (over users'
    log1p counts) to the items a user interacted with, weighted by those counts.

    In factor form the user's row is their log1p counts over every item and the item's row its
    similarities, so the same lookup + MatMul + TopK graph serves it (dense: fine for a few
    thousand items, an approximate-neighbour index beyond).
    """

    def __init__(self) -> None:
        pass

    def fit(self, data: Interactions) -> ItemKNN:
        weights = data.matrix.copy()
        weights.data = np.log1p(weights.data)
        norms = np.sqrt(np.asarray(weights.multiply(weights).sum(axis=0)).ravel())
        normed = weights @ sparse.diags(1.0 / np.maximum(norms, 1e-12))
        similarity = np.asarray((normed.T @ normed).todense())
        self._set(data, weights.toarray(), similarity)
        return self


class ImplicitALS(FactorModel):
    """Implicit-feedback matrix factorization by alternating least squares (Hu, Koren and
    Volinsky 2008, "Collaborative Filtering for Implicit Feedback Datasets").

    Preference p = 1 where a user played an item, else 0; confidence c = 1 + alpha * count. Each
    half-step solves, per user u, ``(Y'Y + Y'(C_u - I)Y + reg I) x_u = Y' C_u p_u`` exactly (and the
    same for items), using Y'Y once per half-step so each solve touches only u's played items.
    """

    def __init__(
        self,
        factors: int = 16,
        regularization: float = 0.1,
        alpha: float = 2.0,
        iterations: int = 10,
        seed: int = 0,
    ) -> None:
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed

    def _half_step(self, rows: sparse.csr_matrix, fixed: np.ndarray) -> np.ndarray:
        f = fixed.shape[1]
        gram = fixed.T @ fixed + self.regularization * np.eye(f)
        out = np.zeros((rows.shape[0], f))
        for u in range(rows.shape[0]):
            start, end = rows.indptr[u], rows.indptr[u + 1]
            if start == end:
                continue
            idx, conf = rows.indices[start:end], 1.0 + self.alpha * rows.data[start:end]
            y = fixed[idx]
            a = gram + (y.T * (conf - 1.0)) @ y
            out[u] = np.linalg.solve(a, y.T @ conf)
        return out

    def fit(self, data: Interactions) -> ImplicitALS:
        params = ALSParams(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
        )
        rng = np.random.default_rng(self.seed)
        users = data.matrix
        items = users.T.tocsr()
        y = rng.normal(0, 0.01, (items.shape[0], params.factors))
        x = np.zeros((users.shape[0], params.factors))
        for _ in range(params.iterations):
            x = self._half_step(users, y)
            y = self._half_step(items, x)
        self._set(data, x, y)
        return self


RECOMMENDERS: dict[str, type[FactorModel]] = {
    "implicit_mf": ImplicitALS,
    "item_knn": ItemKNN,
    "popularity": Popularity,
}
"""Recommender families by the short name a retrieval spec's ``model.family`` uses."""


def build_recommender(family: str, params: Mapping[str, Any], seed: int) -> FactorModel:
    """An unfitted recommender of ``family`` with ``params``.

    Raises:
        SpecError: the family is unknown or a parameter does not fit it.
    """
    cls = RECOMMENDERS.get(family)
    if cls is None:
        raise SpecError(
            f"model.family {family!r} is not a retrieval family; use one of {sorted(RECOMMENDERS)}"
        )
    if cls in (Popularity, ItemKNN):
        if params:
            raise SpecError(f"model.params: {family} takes no parameters, got {sorted(params)}")
        return cls()
    try:
        checked = ALSParams.model_validate(dict(params))
    except ValueError as exc:
        raise SpecError(f"model.params of {family!r}: {exc}") from exc
    return ImplicitALS(**checked.model_dump(), seed=seed)
