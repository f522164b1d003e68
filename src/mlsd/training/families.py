"""Model families by short name: each builds an unfitted scikit-learn pipeline from the inputs.

The whole inference path (encoding, scaling, model) is one pipeline, so one object is trained,
pickled for parity checks and exported to one ONNX graph. A spec's ``model.family`` is a key of
:data:`FAMILIES` or ``"package.module:function"`` returning a :class:`Family`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlsd.errors import SpecError
from mlsd.spec import TOKEN_PATTERN, ModelInput, TextSpec

Builder = Callable[[list[ModelInput], Mapping[str, Any], int, int], Any]


@dataclass(frozen=True)
class Family:
    """How to build a family's pipeline, and how (if at all) it trains data-parallel on Ray.

    Attributes:
        build: ``(inputs, params, seed, threads) -> unfitted sklearn Pipeline``.
        ray_trainer: ``"module:Class"`` of the Ray Train trainer that connects the workers of a
            data-parallel fit; None means the family fits on one worker.
        distribute: ``(pipeline, network_params) -> pipeline`` for one worker of a distributed fit.
    """

    build: Builder
    ray_trainer: str | None = None
    distribute: Callable[[Any, Mapping[str, Any]], Any] | None = None


def _categories(inputs: list[ModelInput]) -> list[list[str]] | str:
    """Declared categories make encoders identical on every worker's shard; else learn them."""
    strings = [i for i in inputs if i.dtype == "string" and i.text is None]
    if all(i.categories is not None for i in strings):
        return [list(i.categories or []) for i in strings]
    return "auto"


def _split(inputs: list[ModelInput]) -> tuple[list[str], list[str]]:
    """Categorical string inputs and numeric inputs (text inputs are neither: see _text_columns)."""
    strings = [i.name for i in inputs if i.dtype == "string" and i.text is None]
    return strings, [i.name for i in inputs if i.dtype != "string"]


def text_vectorizer(text: TextSpec) -> Any:
    """The TF-IDF vectorizer of one text input, configured so its ONNX graph matches it.

    The token pattern is :data:`mlsd.spec.TOKEN_PATTERN` and case is kept (ONNX Runtime's
    tokenizer and normalizer differ from scikit-learn's defaults); ``sublinear_tf`` stays off.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        token_pattern=TOKEN_PATTERN,
        lowercase=False,
        max_features=text.max_features,
        ngram_range=(1, text.ngram_max),
        min_df=text.min_df,
        binary=text.binary,
    )


def _columns(inputs: list[ModelInput], strings: Any, numbers: Any) -> Any:
    """One ColumnTransformer: a TF-IDF vectorizer per text input, ``strings`` on the categorical
    strings and ``numbers`` on the numbers; a part with no columns is left out (a text-only model)."""
    from sklearn.compose import ColumnTransformer

    categorical, numeric = _split(inputs)
    # A text column is selected by name (not [name]): the vectorizer takes one string per row.
    parts: list[tuple[str, Any, str | list[str]]] = [
        (f"text_{i.name}", text_vectorizer(i.text), i.name) for i in inputs if i.text is not None
    ]
    parts += [
        (name, step, cols)
        for name, step, cols in (("strings", strings, categorical), ("numbers", numbers, numeric))
        if cols
    ]
    return ColumnTransformer(parts)


def lightgbm_pipeline(inputs: list[ModelInput], params: Mapping[str, Any], seed: int, threads: int) -> Any:
    """Ordinal-encoded strings + numbers (+ TF-IDF text) into LightGBM (unknown strings -> -1)."""
    from lightgbm import LGBMClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    encoder = OrdinalEncoder(
        categories=_categories(inputs), handle_unknown="use_encoded_value", unknown_value=-1
    )
    pre = _columns(inputs, encoder, "passthrough")
    model = LGBMClassifier(**{"verbose": -1, **params}, random_state=seed, n_jobs=threads, deterministic=True)
    return Pipeline([("pre", pre), ("model", model)])


def lightgbm_distribute(pipeline: Any, network: Mapping[str, Any]) -> Any:
    """LightGBM's data-parallel tree learner over the workers Ray Train connected."""
    return pipeline.set_params(
        **{f"model__{k}": v for k, v in network.items()},
        model__tree_learner="data",
        model__pre_partition=True,
    )


def logistic_pipeline(inputs: list[ModelInput], params: Mapping[str, Any], seed: int, threads: int) -> Any:
    """One-hot strings + standardized numbers (+ TF-IDF text) into a logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    encoder = OneHotEncoder(categories=_categories(inputs), handle_unknown="ignore")
    pre = _columns(inputs, encoder, StandardScaler())
    model = LogisticRegression(**{"max_iter": 1000, **params}, random_state=seed)
    return Pipeline([("pre", pre), ("model", model)])


FAMILIES: dict[str, Family] = {
    "lightgbm": Family(
        lightgbm_pipeline,
        ray_trainer="ray.train.lightgbm:LightGBMTrainer",
        distribute=lightgbm_distribute,
    ),
    "sklearn_logistic": Family(logistic_pipeline),
}


def load_object(path: str) -> Any:
    """``"package.module:attr"`` -> the attribute (ImportError/AttributeError if absent)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_family(name: str) -> Family:
    """A family by short name, or by ``"module:function"`` for families outside mlsd.

    Raises:
        SpecError: the name is neither a known family nor an importable factory.
    """
    if name in FAMILIES:
        return FAMILIES[name]
    if ":" not in name:
        raise SpecError(f"model.family {name!r} is not one of {sorted(FAMILIES)} and not 'module:function'")
    try:
        factory = load_object(name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"model.family {name!r}: cannot load it ({exc})") from exc
    family = factory()
    if not isinstance(family, Family):
        raise SpecError(f"model.family {name!r}: {name}() returned {type(family).__name__}, not Family")
    return family
