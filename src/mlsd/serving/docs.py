"""The API's documentation as the service publishes it: an offline Swagger UI page and an OpenAPI
document that says what each route really answers.

BentoML's page at ``/`` loads Google Tag Manager from the internet, and its Swagger UI asks
validator.swagger.io for a badge. Here ``/`` and ``/docs`` answer a page that loads only the
Swagger UI files BentoML ships (``/static_content/``, from this server), under a
Content-Security-Policy that lets the browser fetch nothing from anywhere else.

BentoML's ``/docs.json`` is generic: version "None", BentoML's own contact, optional request
bodies, and 400/404/500 on every route. Here it names the service and the mlsd version, marks
request bodies required and lists the answers each route really gives (:func:`api_document`).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import json
from typing import TYPE_CHECKING, Any

from mlsd.serving.http import ASGIApp, Message, Receive, Scope, Send
from mlsd.serving.schema import REQUEST_ID

if TYPE_CHECKING:
    from mlsd.serving.app import ServiceConfig

PAGES = ("/", "/docs")
DOCUMENT = "/docs.json"

_INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};"""
"""Swagger UI without the standalone top bar (a URL box) and without the online validator badge."""

_INIT_HASH = base64.b64encode(hashlib.sha256(_INIT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; "
    f"script-src 'self' 'sha256-{_INIT_HASH}'; "
    "style-src 'self' 'unsafe-inline'; "  # Swagger UI's React components set inline styles
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this server: a script, style or image from another origin is blocked by the browser."""

_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{title}</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script>{init}</script>
  </body>
</html>
"""

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what is wrong and how to fix it"},
        "detail": {"type": "string", "description": "for a 400: each field that is wrong, with why"},
    },
    "required": ["error"],
}
ROLLOUT_REFUSED_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "why the rollout file was refused"},
        "serving": {"type": "object", "description": "the rollout that keeps serving"},
    },
    "required": ["error", "serving"],
}
CLIENT_ERRORS = {
    400: "Bad request: malformed JSON, or a field that is missing, unknown, wrong-typed or out of range "
    "(named in the message)",
    401: "No or wrong bearer token (send 'Authorization: Bearer <token>')",
    413: "The body is over serving.max_body_bytes",
    415: "The body is not application/json",
    500: "The service failed; the server log has the cause",
}
ROUTES = {
    "/predict": (True, (400, 413, 415, 500)),
    "/predict_batch": (True, (400, 413, 415, 500)),
    "/rollout": (False, (400, 409, 413, 415, 500)),
}
"""Whether each route needs a body (/rollout takes none, or any object), and the statuses it
answers besides 200 (401 too where a bearer token is required)."""


def _response(status: int, schema: str) -> dict[str, Any]:
    description = CLIENT_ERRORS.get(status, "The rollout file is invalid; the running rollout keeps serving")
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def api_document(
    bentoml_doc: dict[str, Any], title: str, version: str, description: str, auth: bool
) -> dict[str, Any]:
    """BentoML's OpenAPI document of the service with its real name, version and answers.

    Args:
        bentoml_doc: what BentoML serves at /docs.json.
        title: the service name.
        version: the mlsd version.
        description: what the service answers (BentoML's own is a README with badges from the web).
        auth: whether /predict, /predict_batch and /rollout require a bearer token (they answer 401).
    """
    doc = copy.deepcopy(bentoml_doc)
    doc["info"] = {"title": title, "version": version, "description": description}
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(
        {"MlsdError": ERROR_SCHEMA, "MlsdRolloutRefused": ROLLOUT_REFUSED_SCHEMA}
    )
    components.setdefault("headers", {})["X-Request-ID"] = {
        "description": "the request's id: the body's request_id, else the caller's X-Request-ID, else made",
        "schema": {"type": "string"},
    }
    if auth:
        components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    for path, (body, statuses) in ROUTES.items():
        operation = doc.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        if "requestBody" in operation:
            operation["requestBody"]["required"] = body
        operation["parameters"] = [
            {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "description": f"the request's id when it matches {REQUEST_ID} (else the server makes one); "
                "a request_id in the body wins; echoed in the response's X-Request-ID",
                "schema": {"type": "string"},
            }
        ]
        ok = operation["responses"].get("200", {"description": "Successful Response"})
        ok.setdefault("headers", {})["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
        answers: dict[str, Any] = {"200": ok}
        for status in sorted((*statuses, 401) if auth else statuses):
            answers[str(status)] = _response(status, "MlsdRolloutRefused" if status == 409 else "MlsdError")
        operation["responses"] = answers
        if auth:
            operation["security"] = [{"bearer": []}]
    return doc


def docs_page(title: str) -> bytes:
    """The Swagger UI page: BentoML's bundled Swagger UI from this server, nothing else."""
    return _PAGE.format(title=html.escape(f"{title} API"), init=_INIT).encode()


class ApiDocs:
    """Answer ``/`` and ``/docs`` with the offline page and ``/docs.json`` with :func:`api_document`
    (titled with the service name, described by the spec's question)."""

    def __init__(self, app: ASGIApp, config: ServiceConfig, auth: bool) -> None:
        from mlsd import __version__

        self.app, self.title, self.auth, self.version = app, config.service_name, auth, __version__
        self.description = (
            f"{config.spec.question}\n\nScored by the models deployment/rollout.yaml names (stable, "
            "canary, shadows) on features from the Feast online store. Every answer carries X-Request-ID."
        )
        self._document: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
        elif path in PAGES:
            await self._send(send, docs_page(self.title), b"text/html; charset=utf-8", scope)
        elif path == DOCUMENT:
            document = self._document or await self._build(scope, receive)
            if document is None:  # BentoML could not make its document: pass its answer on
                await self.app(scope, receive, send)
            else:
                await self._send(send, document, b"application/json", scope)
        else:
            await self.app(scope, receive, send)

    async def _build(self, scope: Scope, receive: Receive) -> bytes | None:
        """BentoML's document (asked of the app behind), rewritten once and kept."""
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.append(message.get("body", b""))

        await self.app({**scope, "method": "GET"}, receive, keep)
        if start.get("status") != 200:
            return None
        doc = api_document(json.loads(b"".join(body)), self.title, self.version, self.description, self.auth)
        self._document = json.dumps(doc).encode()
        return self._document

    @staticmethod
    async def _send(send: Send, body: bytes, media: bytes, scope: Scope) -> None:
        headers = [
            (b"content-type", media),
            (b"content-length", str(len(body)).encode()),
            (b"content-security-policy", CSP.encode()),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})
