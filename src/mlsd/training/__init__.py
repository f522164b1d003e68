"""Training: model families as sklearn pipelines, fitted through Ray Train and tuned with Ray Tune."""

from mlsd.training.factors import RECOMMENDERS, FactorModel, Interactions, build_recommender
from mlsd.training.families import FAMILIES, Family, get_family
from mlsd.training.frames import TimeSplit, fingerprint, labels, model_frame, time_split
from mlsd.training.params import RayParams, TrainingParams, TuneParams
from mlsd.training.ray_fit import FitResult, fit_on_ray
from mlsd.training.retrieval import (
    fit_ranker_on_ray,
    fit_recommender_on_ray,
    search_ranker,
    search_recommender,
)
from mlsd.training.runtime import ensure_ray
from mlsd.training.search import SearchResult, search, tune_space
from mlsd.training.text_retrieval import Documents, Judgments, TextRetriever, build_text_retriever
from mlsd.training.two_stage import StageColumns, TwoStageModel, feature_tables, ranker_training_rows
from mlsd.training.uplift import TLearner, fit_uplift_on_ray, search_uplift

__all__ = [
    "FAMILIES",
    "RECOMMENDERS",
    "Documents",
    "FactorModel",
    "Family",
    "FitResult",
    "Interactions",
    "Judgments",
    "RayParams",
    "SearchResult",
    "StageColumns",
    "TLearner",
    "TextRetriever",
    "TimeSplit",
    "TrainingParams",
    "TuneParams",
    "TwoStageModel",
    "build_recommender",
    "build_text_retriever",
    "ensure_ray",
    "feature_tables",
    "fingerprint",
    "fit_on_ray",
    "fit_ranker_on_ray",
    "fit_recommender_on_ray",
    "fit_uplift_on_ray",
    "get_family",
    "labels",
    "model_frame",
    "ranker_training_rows",
    "search",
    "search_ranker",
    "search_recommender",
    "search_uplift",
    "time_split",
    "tune_space",
]
