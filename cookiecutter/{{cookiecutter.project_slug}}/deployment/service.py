"""The online scoring service: ``bentoml serve deployment`` from the project root.

The request and response models come from the problem spec (conf/base/problem.yml), the
models from the registry via deployment/rollout.yaml, features from the Feast online store.
Set ``MLSD_PROJECT_DIR`` to serve another project and ``MLSD_ENV=production`` for the
production profile (Redis online store, Postgres Feast registry, a bearer token from $MLSD_API_TOKEN).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("MLSD_PROJECT_DIR", str(Path(__file__).resolve().parent.parent))

import bentoml
from starlette.responses import JSONResponse

from mlsd.errors import RolloutError
from mlsd.serving import api_models, build_scorer, load_config
from mlsd.serving.docs import ApiDocs
from mlsd.serving.http import (
    PROTECTED_PATHS,
    BearerAuth,
    RequestGuard,
    RequestLog,
    ValidationErrors,
    request_id,
)
from mlsd.serving.preflight import check_service
from mlsd.telemetry import telemetry_off

telemetry_off()
CONFIG = load_config()
API = api_models(CONFIG.spec, CONFIG.params.max_batch)
TOKEN = check_service(CONFIG)  # a misconfigured server stops here, naming the variable and the fix


@bentoml.service(
    name=CONFIG.service_name,
    workers=CONFIG.params.workers,
    traffic={"timeout": CONFIG.params.timeout_s},
    logging={"access": {"enabled": False}},
)
class Scorer:
    """Scores requests for the spec's question with the rollout's models."""

    def __init__(self) -> None:
        self.scorer = build_scorer(CONFIG)

    @bentoml.api(route="/predict", input_spec=API.request, output_spec=API.prediction)
    async def predict(self, **request: Any) -> Any:
        """Score one request (stored features the online store cannot give come as defaults, named
        in ``missing_features``)."""
        request["request_id"] = request_id(request.get("request_id"))  # else X-Request-ID, else made
        return API.prediction(**self.scorer.score([request])[0])

    @bentoml.api(route="/predict_batch", input_spec=API.batch_request, output_spec=API.batch_response)
    async def predict_batch(self, requests: list[Any]) -> Any:
        """Score a list of requests in one call (at most serving.max_batch)."""
        scored = self.scorer.score([dict(r) for r in requests])
        return API.batch_response(predictions=[API.prediction(**p) for p in scored])

    @bentoml.api(route="/rollout")
    async def rollout(self) -> Any:
        """Re-read deployment/rollout.yaml now and return the rollout that serves (409 if invalid).

        The server also picks changes up by itself within serving.reload_s seconds.
        """
        try:
            self.scorer.rollout.reload(force=True)
        except RolloutError as exc:
            return JSONResponse(
                {"error": str(exc), "serving": self.scorer.rollout.active.describe()}, status_code=409
            )
        return self.scorer.rollout.active.describe()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Finish shadow work and flush the prediction log."""
        self.scorer.close()


# Outermost first: request ids and client-error logging see every answer, the others' too.
Scorer.add_asgi_middleware(RequestLog, paths=PROTECTED_PATHS)
Scorer.add_asgi_middleware(ApiDocs, config=CONFIG, auth=TOKEN is not None)
Scorer.add_asgi_middleware(ValidationErrors)
Scorer.add_asgi_middleware(RequestGuard, max_bytes=CONFIG.params.max_body_bytes)
if TOKEN is not None:
    Scorer.add_asgi_middleware(BearerAuth, token=TOKEN)
