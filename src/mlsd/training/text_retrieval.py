"""Text retrieval: a query text against a document collection, TF-IDF cosine, then a pointwise rank.

Two stages, both exportable to one ONNX graph (mlsd.export.text_retrieval_to_onnx):

1. **Retrieve**: the query's TF-IDF vector (L2-normalized) times every document's: cosine
   similarity; the ``candidates`` most similar documents go on.
2. **Rank**: a pointwise logistic model on ``[similarity, document features]`` (popularity,
   quality ...), fitted on judged (query, document, clicked) pairs, scores the candidates; the
   response is the top k by that logit. Without judgments (``ranker=False``) the logit is the
   similarity itself: plain TF-IDF retrieval, the baseline.

An **intent** retriever (``intent=True``, family ``tfidf_intent``) learns from judged searches
instead: a multinomial logistic model of the query's TF-IDF vector (vocabulary of the documents
and the judged queries, so paraphrases the documents never use count) over the documents that
resolved a search, plus a class for searches nothing resolved. Its weights fold into the document
matrix and a per-document bias: score = cosine + class logit, the same graph as the others.

With ``escalation``, an **escalation head** (logistic, on the top score and the query's TF-IDF
vector) learns from the judged searches whether a top item resolves a query: ``answer_p``.

Tokens are :data:`mlsd.spec.TOKEN_PATTERN` matches (ASCII letters and digits) of the text with
ASCII letters lowercased (:func:`fold_case`), for documents and queries alike: "Reset" and "reset"
are one word. The ONNX graph does the same (StringNormalizer in the "C" locale, which every
platform has and which lowercases exactly A-Z), so a query scores the same offline and online.

With ``max_df``, words in more than that share of the texts the vocabulary is learned from
(documents, and for an intent retriever the judged queries) are stop words ("how", "my" ...): they
carry no weight anywhere. A query with no word of the vocabulary left has nothing to match: its
scores are the documents' priors, and the escalation head gives it ``answer_p`` 0 (escalate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mlsd.errors import SpecError, TrainingError
from mlsd.spec import TextSpec
from mlsd.training.families import text_vectorizer

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_case(texts: Any) -> np.ndarray:
    """``texts`` as an object array with ASCII A-Z lowercased and nothing else changed: what ONNX
    Runtime's StringNormalizer does in the "C" locale (``str.lower`` would also fold non-ASCII
    letters, some into ASCII ones, e.g. the Kelvin sign into "k")."""
    flat = np.asarray(texts, dtype=object)
    return np.array([str(t).translate(_ASCII_LOWER) for t in flat.ravel()], dtype=object).reshape(flat.shape)


@dataclass(frozen=True)
class Documents:
    """The collection a query is matched against.

    Attributes:
        ids: ``[D]`` int64 document ids (unique).
        texts: ``[D]`` document texts (what the vectorizer learns and matches).
        features: ``[D, F]`` numbers the ranker reads beside the similarity (``F`` may be 0).
    """

    ids: np.ndarray
    texts: np.ndarray
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=np.int64)
        feats = np.asarray(self.features, dtype=np.float32)
        if feats.size == 0:
            feats = np.zeros((len(ids), 0), dtype=np.float32)
        if len(np.unique(ids)) != len(ids):
            raise TrainingError("Documents.ids: document ids must be unique (one row per document)")
        if len(self.texts) != len(ids) or feats.shape[0] != len(ids) or feats.ndim != 2:
            raise TrainingError(
                f"Documents: {len(ids)} ids, {len(self.texts)} texts and features of shape {feats.shape}; "
                "give one text and one feature row per id"
            )
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "texts", np.asarray(self.texts, dtype=object))
        object.__setattr__(self, "features", feats)


@dataclass(frozen=True)
class Judgments:
    """Judged (query, document) pairs the ranker learns from: ``labels`` 1 = clicked / relevant.

    ``groups`` says which rows are one search (default: every row its own); the intent classes and
    the escalation head learn per search: the document that resolved it, or none.
    """

    queries: np.ndarray
    doc_ids: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None

    def searches(self) -> tuple[np.ndarray, np.ndarray]:
        """Each search's query (its first row's) and the document that resolved it (the labelled
        one; the highest id if several were), -1 for none."""
        import pandas as pd

        groups = np.arange(len(self.labels)) if self.groups is None else np.asarray(self.groups)
        frame = pd.DataFrame(
            {"g": groups, "q": np.asarray(self.queries, dtype=object), "doc": np.asarray(self.doc_ids)}
        )
        frame["doc"] = frame["doc"].where(np.asarray(self.labels) > 0, -1)
        first = frame.groupby("g", sort=False).agg(q=("q", "first"), doc=("doc", "max"))
        return first["q"].to_numpy(object), first["doc"].to_numpy(np.int64)


class TextRetriever:
    """TF-IDF retrieval over ``Documents`` with an optional pointwise logistic ranker.

    Fitted state: ``vectorizer_`` (scikit-learn TfidfVectorizer), ``doc_ids_`` ``[D]``,
    ``doc_matrix_`` ``[D, V]`` float32 (L2-normalized rows), ``doc_features_`` ``[D, F]``,
    ``weights_`` ``[1 + F]`` (similarity first) and ``bias_``.
    """

    def __init__(
        self,
        text: TextSpec | None = None,
        candidates: int = 100,
        ranker: bool = False,
        regularization: float = 1.0,
        seed: int = 0,
        intent: bool = False,
        escalation: bool = False,
        max_df: float | None = None,
    ) -> None:
        self.text, self.candidates, self.ranker = text, candidates, ranker
        self.regularization, self.seed = regularization, seed
        self.intent, self.escalation = intent, escalation
        self.max_df = max_df

    def fit(self, documents: Documents, judgments: Judgments | None = None) -> TextRetriever:
        """Learn the vocabulary and the document matrix; with ``ranker``, the ranker on ``judgments``.

        Raises:
            TrainingError: a ranker without judgments, or judgments of unknown documents.
        """
        if self.candidates < 1:
            raise TrainingError(f"candidates must be a positive integer, got {self.candidates}")
        if self.intent and (self.ranker or documents.features.shape[1]):
            raise TrainingError(
                "TextRetriever(intent=True) ranks by its classes: no ranker and no document features"
            )
        needs = [name for name in ("ranker", "intent", "escalation") if getattr(self, name)]
        if needs and (judgments is None or len(judgments.labels) == 0):
            raise TrainingError(f"TextRetriever({needs[0]}=True) needs judged (query, document, label) pairs")
        searches = None  # per search: its query and the document that resolved it, computed once
        if self.intent or self.escalation:
            assert judgments is not None  # checked above
            searches = judgments.searches()
        vectorizer = text_vectorizer(self.text or TextSpec(min_df=1))
        if self.max_df is not None:
            vectorizer.set_params(max_df=self.max_df)
        corpus = documents.texts
        if self.intent:
            assert searches is not None
            corpus = np.concatenate([documents.texts, searches[0]])
        vectorizer.fit(fold_case(corpus))
        self.vectorizer_, self.doc_ids_ = vectorizer, documents.ids
        self.doc_matrix_ = self._vectors(documents.texts).toarray().astype(np.float32)
        self.doc_features_ = documents.features
        n_features = documents.features.shape[1]
        self.weights_ = np.zeros(1 + n_features, dtype=np.float32)
        self.weights_[0], self.bias_ = 1.0, 0.0
        if self.ranker:
            assert judgments is not None
            self._fit_ranker(judgments)
        if self.intent:
            assert searches is not None
            self._fit_intents(*searches)
        if self.escalation:
            assert searches is not None
            self._fit_escalation(*searches)
        return self

    def _fit_intents(self, queries: np.ndarray, resolved: np.ndarray) -> None:
        """Multinomial logistic regression of each search's query vector over the documents that
        resolved searches and a none class; each document's class weights join its row of the
        document matrix and its intercept becomes its one document feature (weight 1). Documents
        no search was resolved by keep their TF-IDF row and the lowest intercept: findable by
        their words, ranked under the documents the logs vouch for."""
        from sklearn.linear_model import LogisticRegression

        rows = np.full(len(resolved), -1)
        known = resolved >= 0
        rows[known] = self._rows(resolved[known])
        if len(np.unique(rows)) < 2:
            raise TrainingError("the intent classifier needs searches resolved by at least two documents")
        fit = LogisticRegression(C=self.regularization, max_iter=2000, random_state=self.seed)
        fit.fit(self._vectors(queries), rows)
        classes = np.asarray(fit.classes_)
        coef, intercept = np.asarray(fit.coef_), np.asarray(fit.intercept_)
        if len(classes) == 2:  # scikit-learn keeps one row: the second class's logit against the first
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
        bias = np.full(len(self.doc_ids_), intercept.min(), dtype=np.float32)
        for c, row in enumerate(classes):
            if row >= 0:
                self.doc_matrix_[row] += coef[c].astype(np.float32)
                bias[row] = intercept[c]
        self.doc_features_ = bias.reshape(-1, 1)
        self.weights_ = np.ones(2, dtype=np.float32)

    def _fit_escalation(self, queries: np.ndarray, resolved: np.ndarray) -> None:
        """Logistic regression of "a document resolved the search" on ``[top score, query vector]``
        (standardized top score, folded back to raw units): ``answer_weights_`` ``[1 + V]`` and
        ``answer_bias_``."""
        from scipy import sparse
        from sklearn.linear_model import LogisticRegression

        y = (resolved >= 0).astype(np.int64)
        if len(np.unique(y)) < 2:
            raise TrainingError(
                "the escalation head needs searches that were resolved and searches that were not"
            )
        top = self.recommend(queries, 1)[1][:, 0].astype(np.float64)
        mean, scale = top.mean(), top.std() + 1e-9
        vectors = self._vectors(queries)
        x = sparse.hstack([sparse.csr_matrix(((top - mean) / scale).reshape(-1, 1)), vectors]).tocsr()
        fit = LogisticRegression(C=self.regularization, max_iter=2000, random_state=self.seed).fit(x, y)
        weights = fit.coef_[0].astype(np.float64)
        weights[0] /= scale
        self.answer_weights_ = weights.astype(np.float32)
        self.answer_bias_ = float(fit.intercept_[0] - weights[0] * mean)

    def _fit_ranker(self, judgments: Judgments) -> None:
        """Logistic regression on standardized ``[similarity, features]``, folded back to raw units."""
        from sklearn.linear_model import LogisticRegression

        rows = self._rows(judgments.doc_ids)
        x = self._pair_features(np.asarray(judgments.queries, dtype=object), rows)
        y = np.asarray(judgments.labels, dtype=np.int64)
        if len(np.unique(y)) < 2:
            raise TrainingError("the ranker's judgments need both clicked and not-clicked pairs")
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        fit = LogisticRegression(C=self.regularization, random_state=self.seed).fit((x - mean) / scale, y)
        weights = fit.coef_[0] / scale
        self.weights_ = weights.astype(np.float32)
        self.bias_ = float(fit.intercept_[0] - weights @ mean)

    def _check_fitted(self) -> None:
        if not hasattr(self, "doc_matrix_"):
            raise TrainingError(f"{type(self).__name__} is not fitted yet; call fit() first")

    def _rows(self, doc_ids: np.ndarray) -> np.ndarray:
        import pandas as pd

        rows = pd.Index(self.doc_ids_).get_indexer(np.asarray(doc_ids, dtype=np.int64))
        if (rows < 0).any():
            raise TrainingError(f"judgments name {int((rows < 0).sum())} document ids not in Documents")
        return np.asarray(rows)

    def _vectors(self, texts: Any) -> Any:
        """The sparse TF-IDF rows of ``texts`` (case folded as the graph does)."""
        return self.vectorizer_.transform(fold_case(texts))

    def _query_matrix(self, queries: np.ndarray) -> np.ndarray:
        return np.asarray(self._vectors(queries).toarray(), np.float32)

    def _pair_features(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[similarity, document features]`` of each judged pair; sparse products, so hundreds of
        thousands of pairs never hold a dense ``[pairs, vocabulary]`` matrix."""
        from scipy import sparse

        asked = self._vectors(queries).astype(np.float32)
        docs = sparse.csr_matrix(self.doc_matrix_)[rows]
        sims = np.asarray(asked.multiply(docs).sum(axis=1)).ravel()
        return np.column_stack([sims, self.doc_features_[rows]]).astype(np.float64)

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarity of every query with every document, ``[N, D]`` float32."""
        self._check_fitted()
        return self._query_matrix(queries) @ self.doc_matrix_.T

    def recommend(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` document ids and their ranker logits per query, best first (``[N, k]``).

        The ``candidates`` most similar documents are ranked; ties keep the lower document row
        first (what ONNX Runtime's TopK does), so the graph gives the same lists.
        """
        sims = self.similarities(queries)
        c = min(self.candidates, sims.shape[1])
        pool = np.argsort(-sims, axis=1, kind="stable")[:, :c]
        logits = (
            self.weights_[0] * np.take_along_axis(sims, pool, axis=1)
            + self.doc_features_[pool] @ self.weights_[1:]
            + np.float32(self.bias_)
        ).astype(np.float32)
        k = min(k, c)
        order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        return self.doc_ids_[np.take_along_axis(pool, order, axis=1)], np.take_along_axis(
            logits, order, axis=1
        )

    def answer_p(self, queries: np.ndarray) -> np.ndarray:
        """The escalation head's P(the top item resolves the query) per query, ``[N]`` float32;
        0 for a query with no word of the vocabulary (nothing in it points to an item: escalate).

        Raises:
            TrainingError: the retriever was fitted without ``escalation``.
        """
        if not hasattr(self, "answer_weights_"):
            raise TrainingError("this retriever has no escalation head; fit it with escalation=True")
        top = self.recommend(queries, 1)[1][:, 0]
        vectors = self._query_matrix(queries)
        logit = (
            self.answer_weights_[0] * top + vectors @ self.answer_weights_[1:] + np.float32(self.answer_bias_)
        )
        p = (1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)
        return np.where(vectors.sum(axis=1) > 0, p, np.float32(0.0))

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments (estimator-shaped)."""
        return {
            "text": self.text,
            "candidates": self.candidates,
            "ranker": self.ranker,
            "regularization": self.regularization,
            "seed": self.seed,
            "intent": self.intent,
            "escalation": self.escalation,
            "max_df": self.max_df,
        }


class TextRetrieverParams(BaseModel):
    """A text retrieval spec's ``model.params`` (and what its search space may vary)."""

    model_config = ConfigDict(extra="forbid")

    regularization: float = Field(
        default=1.0,
        gt=0,
        description="inverse L2 strength (C) of the ranker, the intent classifier and the escalation head",
    )
    max_df: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="words in more than this share of the texts the vocabulary is learned from are stop "
        "words (no weight); null keeps every word",
    )


TEXT_RETRIEVERS: dict[str, dict[str, bool]] = {
    "tfidf": {},
    "tfidf_ranker": {"ranker": True},
    "tfidf_intent": {"intent": True},
}
"""Text retrieval families by the short name a spec's ``model.family`` uses -> how the family
ranks: by similarity alone (``tfidf``), with document features (``tfidf_ranker``), or by an intent
classifier learned from the judged searches (``tfidf_intent``)."""


def build_text_retriever(
    params: dict[str, Any],
    *,
    family: str,
    text: TextSpec | None,
    candidates: int,
    features: int,
    seed: int,
    escalation: bool = False,
) -> TextRetriever:
    """An unfitted :class:`TextRetriever` of ``family`` with the spec's ``params``, for a model
    reading ``features`` document features (with an escalation head when ``escalation``).

    Raises:
        SpecError: the family is unknown, does not fit the features, or a parameter does not fit.
    """
    kind = TEXT_RETRIEVERS.get(family)
    if kind is None:
        raise SpecError(
            f"model.family {family!r} is not a text retrieval family; use one of {sorted(TEXT_RETRIEVERS)}"
        )
    if kind.get("ranker", False) != (features > 0):
        raise SpecError(
            f"model.family {family!r}: tfidf and tfidf_intent read only the query, tfidf_ranker also "
            f"reads document features (inputs: the query and numeric feature fields); "
            f"this model lists {features} document features"
        )
    try:
        checked = TextRetrieverParams.model_validate(dict(params))
    except ValueError as exc:
        raise SpecError(f"model.params of a text retriever: {exc}") from exc
    return TextRetriever(
        text=text,
        candidates=candidates,
        regularization=checked.regularization,
        max_df=checked.max_df,
        seed=seed,
        escalation=escalation,
        **kind,
    )
