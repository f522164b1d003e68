"""Baseline (b) of bench/bench_serving.py, the naive endpoint: Feast ``get_online_features`` per
request, a one-row DataFrame and the native scikit-learn/LightGBM ``predict_proba``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import bentoml
import pandas as pd

from mlsd.features import FeatureStoreParams, fill_defaults, online_features, open_store
from mlsd.spec import load_spec
from mlsd.training import model_frame

PROJECT = Path(os.environ["MLSD_PROJECT_DIR"])


@bentoml.service(name="naive-native", logging={"access": {"enabled": False}})
class Naive:
    def __init__(self) -> None:
        self.spec = load_spec(PROJECT / "conf" / "base" / "problem.yml")
        self.store = open_store(FeatureStoreParams(repo_path=PROJECT / "feature_repo"))
        self.model = pickle.loads((PROJECT / "data" / "06_models" / "candidate_model.pkl").read_bytes())
        self.inputs = self.spec.model_input_schema()

    @bentoml.api(route="/predict")
    def predict(self, request: dict[str, Any]) -> dict[str, float]:
        keys = {k: request[k] for k in self.spec.serving.entity_keys}
        features = online_features(self.store, self.spec, [keys])
        frame, _ = fill_defaults(self.spec, pd.DataFrame(features))
        for name in self.spec.serving.context:
            frame[name] = request[name]
        return {"score": float(self.model.predict_proba(model_frame(self.inputs, frame))[0, 1])}
