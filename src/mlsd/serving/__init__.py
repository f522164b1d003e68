"""Online serving: request models from the spec, Feast online features, routing, ONNX Runtime,
the prediction log and Prometheus metrics. deployment/service.py wraps it in BentoML."""

from mlsd.serving.app import ServiceConfig, ServingParams, build_scorer, load_config
from mlsd.serving.schema import Answer, ApiModels, LabelScores, Prediction, Recommendation, api_models

__all__ = [
    "Answer",
    "ApiModels",
    "LabelScores",
    "Prediction",
    "Recommendation",
    "ServiceConfig",
    "ServingParams",
    "api_models",
    "build_scorer",
    "load_config",
]
