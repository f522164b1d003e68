"""Two-stage retrieval: a factor recommender proposes candidates, a ranker re-scores them.

Stage 1 (any :class:`~mlsd.training.factors.FactorModel`) ranks every item for a user and keeps the
best ``candidates``. Stage 2 is a classifier from the spec's families (a GBDT pipeline) over one
row per (user, candidate), predicting the label (a purchase, say). Its features are arrays a graph
can gather, so both stages export to one ONNX graph (mlsd.export.two_stage_graph):

- ``candidate_score``: the stage-1 score;
- per user: ``user_activity`` (log1p of the interactions), ``user_label_rate`` (labels per
  interaction) and ``user_<c>`` for each item column c (the mean of c over the user's labelled
  rows, over all the user's rows when none is labelled; the overall mean for unknown users);
- per item: ``item_activity``, ``item_label_rate`` and ``item_<c>`` (the item's value);
- ``gap_<c>`` = ``item_<c> - user_<c>`` (how far the item is from what the user usually takes).

Every feature is on a grid of 1 / :data:`GRID` (see there: the parity gate needs it).

The ranker learns on the candidates of a stage-1 model fitted on the training span, labelled by
what each user did in the validation span: the same question it answers when served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlsd.training.factors import FactorModel

SCORE_FEATURE = "candidate_score"
GRID = 1024.0
"""Every ranker feature is a multiple of 1 / GRID (exact in float32 below 2**13). A tree threshold
sits halfway between two training values, so on this grid it is exact in float32 as well: ONNX
Runtime (float32 thresholds) and the native model (float64 ones) then split every value the same
way. Continuous features off the grid land within float rounding of a threshold now and then,
and a candidate's probability jumps (measured: 2 of 2,000 users' lists differed)."""
USER_FEATURES = ("user_activity", "user_label_rate")
ITEM_FEATURES = ("item_activity", "item_label_rate")


@dataclass(frozen=True)
class StageColumns:
    """Which events columns the stages read: keys, the stage-1 counts, the label and item attributes."""

    user: str
    item: str
    interaction: str
    label: str
    item_columns: tuple[str, ...] = ()

    def feature_names(self) -> list[str]:
        """The ranker's inputs in graph order: score, user table, item table, gaps."""
        cols = self.item_columns
        return [
            SCORE_FEATURE,
            *USER_FEATURES,
            *(f"user_{c}" for c in cols),
            *ITEM_FEATURES,
            *(f"item_{c}" for c in cols),
            *(f"gap_{c}" for c in cols),
        ]


@dataclass(frozen=True)
class FeatureTables:
    """Per-user rows ``[U + 1, 2 + c]`` (the last is the cold-start row) in the retriever's user
    order, and per-item rows ``[I, 2 + c]`` in its item order; float32, what the graph gathers."""

    users: np.ndarray
    items: np.ndarray


def feature_tables(retriever: FactorModel, rows: pd.DataFrame, cols: StageColumns) -> FeatureTables:
    """The user and item tables from ``rows`` (the span the retriever was fitted on)."""
    inter = rows[cols.interaction].to_numpy(dtype=np.float64)
    label = (rows[cols.label].to_numpy() > 0).astype(np.float64)
    attrs = rows[list(cols.item_columns)].to_numpy(dtype=np.float64).reshape(len(rows), -1)
    frame = pd.DataFrame(
        {"u": rows[cols.user].to_numpy(), "i": rows[cols.item].to_numpy(), "n": inter, "y": label}
    )
    for j in range(attrs.shape[1]):
        frame[f"yc{j}"], frame[f"nc{j}"] = label * attrs[:, j], inter * attrs[:, j]
    users = frame.groupby("u").sum(numeric_only=True).reindex(retriever.user_ids_, fill_value=0.0)
    n, y = users["n"].to_numpy(), users["y"].to_numpy()
    overall = (frame[[f"nc{j}" for j in range(attrs.shape[1])]].sum() / max(inter.sum(), 1.0)).to_numpy()
    user_cols = []
    for j in range(attrs.shape[1]):
        by_label = users[f"yc{j}"].to_numpy() / np.maximum(y, 1.0)
        by_inter = np.where(n > 0, users[f"nc{j}"].to_numpy() / np.maximum(n, 1.0), overall[j])
        user_cols.append(np.where(y > 0, by_label, by_inter))
    user_rows = np.column_stack([np.log1p(n), y / (n + 1.0), *user_cols])
    cold = np.concatenate([[np.log1p(n.mean()), y.sum() / (n.sum() + len(n))], overall])
    items = frame.groupby("i").agg({"n": "sum", "y": "sum"}).reindex(retriever.item_ids_, fill_value=0.0)
    last = pd.DataFrame(attrs, index=rows[cols.item].to_numpy()).groupby(level=0).last()
    item_attrs = last.reindex(retriever.item_ids_).fillna(pd.Series(overall)).to_numpy()
    item_rows = np.column_stack(
        [np.log1p(items["n"].to_numpy()), items["y"].to_numpy() / (items["n"].to_numpy() + 1.0), item_attrs]
    )
    return FeatureTables(users=on_grid(np.vstack([user_rows, cold])), items=on_grid(item_rows))


def on_grid(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the nearest multiple of 1 / :data:`GRID` (half to even), float32."""
    return (np.round(np.asarray(values, dtype=np.float64) * GRID) / GRID).astype(np.float32)


def candidate_features(
    retriever: FactorModel, tables: FeatureTables, user_ids: np.ndarray, n_candidates: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's candidate items ``[N, C]`` and their ranker features ``[N, C, F]`` (float32)."""
    scores = retriever.exact_scores(user_ids)
    c = min(n_candidates, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :c]
    index = pd.Index(retriever.user_ids_).get_indexer(np.asarray(user_ids, dtype=np.int64))
    user = tables.users[np.where(index < 0, len(retriever.user_ids_), index)]
    user = np.broadcast_to(user[:, None, :], (len(top), c, user.shape[1]))
    item = tables.items[top]
    gap = item[:, :, item.shape[2] - n_cols :] - user[:, :, user.shape[2] - n_cols :]
    score = on_grid(np.take_along_axis(scores, top, axis=1)[:, :, None])
    return retriever.item_ids_[top], np.concatenate([score, user, item, gap], axis=2).astype(np.float32)


class TwoStageModel:
    """A fitted retriever, its feature tables and a fitted ranker (a scikit-learn pipeline whose
    ``predict_proba`` reads a frame with :meth:`StageColumns.feature_names` columns)."""

    grid = GRID  # the exported graph rounds the stage-1 score to the same grid

    def __init__(
        self,
        retriever: FactorModel,
        tables: FeatureTables,
        ranker: object,
        columns: StageColumns,
        n_candidates: int,
    ) -> None:
        self.retriever, self.tables, self.ranker = retriever, tables, ranker
        self.columns, self.n_candidates = columns, n_candidates

    @property
    def item_ids_(self) -> np.ndarray:
        """The items stage 1 can propose."""
        return self.retriever.item_ids_

    def candidates(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 alone: each user's candidate items and stage-1 scores, best first."""
        scores = self.retriever.exact_scores(user_ids)
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(self.n_candidates, scores.shape[1])]
        return self.retriever.item_ids_[top], np.take_along_axis(scores, top, axis=1)

    def recommend(self, user_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Both stages: the top ``k`` candidates by the ranker's probability, and that probability."""
        names = self.columns.feature_names()
        items, feats = candidate_features(
            self.retriever, self.tables, user_ids, self.n_candidates, len(self.columns.item_columns)
        )
        flat = pd.DataFrame(feats.reshape(-1, len(names)), columns=names)
        proba = self.ranker.predict_proba(flat)[:, 1].reshape(items.shape).astype(np.float32)  # type: ignore[attr-defined]
        top = np.argsort(-proba, axis=1, kind="stable")[:, : min(k, items.shape[1])]
        return np.take_along_axis(items, top, axis=1), np.take_along_axis(proba, top, axis=1)


def ranker_training_rows(
    retriever: FactorModel,
    tables: FeatureTables,
    columns: StageColumns,
    n_candidates: int,
    later: pd.DataFrame,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Features of every known user's candidates, labelled 1 where the user has the label on that
    item in ``later`` (the span after the retriever's)."""
    users = retriever.user_ids_
    items, feats = candidate_features(retriever, tables, users, n_candidates, len(columns.item_columns))
    positive = later.loc[later[columns.label] > 0, [columns.user, columns.item]].drop_duplicates()
    keys = pd.MultiIndex.from_arrays([np.repeat(users, items.shape[1]), items.ravel()])
    y = keys.isin(pd.MultiIndex.from_frame(positive)).astype(np.int64)
    names = columns.feature_names()
    return pd.DataFrame(feats.reshape(-1, len(names)), columns=names), y
