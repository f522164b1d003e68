"""Baseline (a) of bench/bench_serving.py, the ceiling: the same ONNX model behind a bare BentoML
endpoint, every model input sent inline (no feature lookup, no routing, no log, no metrics)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from mlsd.export import SCORE_OUTPUT, session
from mlsd.registry import MODEL_FILE, ModelRegistry
from mlsd.spec import load_spec

PROJECT = Path(os.environ["MLSD_PROJECT_DIR"])


@bentoml.service(name="bare-onnx", logging={"access": {"enabled": False}})
class Bare:
    def __init__(self) -> None:
        spec = load_spec(PROJECT / "conf" / "base" / "problem.yml")
        registry = ModelRegistry(PROJECT / "data" / "06_models" / "bentoml", spec.name)
        self.inputs = [
            (i.name, object if i.dtype == "string" else np.float32) for i in spec.model_input_schema()
        ]
        self.session = session(
            (registry.get(str(registry.stable())).path / MODEL_FILE).read_bytes(), threads=1
        )

    @bentoml.api(route="/predict")
    async def predict(self, features: dict[str, Any]) -> dict[str, float]:
        feeds = {name: np.array([[features[name]]], dtype=dtype) for name, dtype in self.inputs}
        (probabilities,) = self.session.run([SCORE_OUTPUT], feeds)
        return {"score": float(probabilities[0, 1])}
