"""HTTP pieces the scoring service adds to BentoML's server: request ids, client errors logged
in one line and counted, a body limit, JSON only, JSON errors in the shape the OpenAPI document
promises, and an optional bearer token on the endpoints that score or change what serves."""

from __future__ import annotations

import hmac
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from mlsd.serving import schema

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


PROTECTED_PATHS = ("/predict", "/predict_batch", "/rollout")
"""What a bearer token guards: scoring (it reads features) and the rollout reload. Health,
readiness and /metrics stay open for load balancers and Prometheus."""


log = logging.getLogger(__name__)

REQUEST_ID = re.compile(schema.REQUEST_ID)
"""A valid request id (the request models' ``request_id`` takes the same)."""

CLIENT_ERROR_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    405: "method_not_allowed",
    409: "rollout_refused",
    413: "too_large",
    415: "unsupported_media_type",
}
"""``kind`` of ``mlsd_request_errors_total{variant="none"}`` by status (another 4xx: ``http_<status>``)."""

_CURRENT_ID: ContextVar[list[str] | None] = ContextVar("mlsd_request_id", default=None)


def request_id(given: str | None = None) -> str | None:
    """The id of the request being answered, and the one its ``X-Request-ID`` answer header carries.

    ``given`` (the body's ``request_id``) wins; else the caller's valid ``X-Request-ID``; else one
    :class:`RequestLog` made. Outside a request (the scorer called in process) it is ``given``.
    """
    current = _CURRENT_ID.get()
    if current is None:
        return given
    if given:
        current[0] = given
    return current[0]


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer an ASGI request with a JSON body."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """Refuse what the API cannot take before BentoML parses it.

    - A POST body that says it is not JSON gets a 415 (BentoML would try to read a form or
      multipart body as the request model and report every field as missing).
    - A body over ``max_bytes`` gets a 413: a declared Content-Length is checked up front, a
      chunked body is read up to the limit and replayed, so an endless stream is never buffered.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: int | str) -> dict[str, Any]:
        return {
            "error": f"request body is {size} bytes; the limit is {self.max_bytes} "
            "(serving.max_body_bytes); send fewer requests per batch"
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if scope.get("method") == "POST" and media != b"application/json":
            await send_json(
                send,
                415,
                {"error": f"Content-Type {media.decode(errors='replace')!r}: send application/json"},
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_json(send, 400, {"error": "Content-Length is not a number"})
            elif int(declared) > self.max_bytes:
                await send_json(send, 413, self._too_large(int(declared)))
            else:
                await self.app(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await send_json(send, 413, self._too_large(f"over {size}"))
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _field_errors(detail: list[Any]) -> str:
    """Pydantic's error list as one line that names each field: ``requests.0.hour: Input should be ...``."""
    parts = []
    for item in detail:
        if isinstance(item, dict):
            where = ".".join(str(part) for part in item.get("loc", ())) or "body"
            parts.append(f"{where}: {item.get('msg', 'invalid')}")
        else:
            parts.append(str(item))
    return "; ".join(parts)


class ValidationErrors:
    """Rewrite BentoML's 400 answers to the documented ``{error: str, detail: str}`` shape.

    BentoML answers a request that fails its pydantic model with ``detail`` as pydantic's list of
    errors, while the OpenAPI document it publishes says ``detail`` is a string (the schemathesis
    run in tests/test_fuzz.py flagged every such 400). Here the list becomes one line naming each
    field, and ``error`` says how many fields are wrong and which, so a client sees the problem
    in the message alone.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def reshape(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                held.append(message)
                return
            if not held:
                await send(message)
                return
            held.append(message)
            if message.get("more_body"):
                return
            body = b"".join(m.get("body", b"") for m in held[1:])
            try:
                answer = json.loads(body)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and isinstance(answer.get("detail"), list):
                detail = _field_errors(answer["detail"])
                await send_json(send, 400, {"error": f"invalid request: {detail}", "detail": detail})
            else:
                for part in held:
                    await send(part)
            held.clear()

        await self.app(scope, receive, reshape)


class BearerAuth:
    """Require ``Authorization: Bearer <token>`` on :data:`PROTECTED_PATHS`; anything else gets a 401.

    The token is compared in constant time. It comes from the environment (conf
    ``serving.auth_token_env`` names the variable), never from a committed file.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/") in PROTECTED_PATHS:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self.token):
                problem = "wrong bearer token" if given else "no Authorization header"
                await send_json(
                    send,
                    401,
                    {"error": f"{problem}: send 'Authorization: Bearer <token>' (the service's token)"},
                    [(b"www-authenticate", b'Bearer realm="mlsd"')],
                )
                return
        await self.app(scope, receive, send)


class _ClientErrorTracebacks(logging.Filter):
    """Drop BentoML's ERROR record (with a traceback) of a request the client got wrong: a pydantic
    validation error or a BentoML 4xx. :class:`RequestLog` logs those in one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            return False
        return not (isinstance(exc, BentoMLException) and int(exc.error_code) < 500)


BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"
"""Where BentoML logs ``Exception on /predict [POST]`` with the traceback, 4xx and 5xx alike."""


class RequestLog:
    """Give each request an id, send it back, and log and count what clients get wrong.

    - ``X-Request-ID``: a caller's id matching :data:`REQUEST_ID` becomes the request's id (else
      the server makes one); every answer carries the id it used back in ``X-Request-ID``.
    - A 4xx answer on one of ``paths`` is one WARNING line (route, status, request id and the
      answer's message, which names the field) and counts in
      ``mlsd_request_errors_total{variant="none", kind}`` (:data:`CLIENT_ERROR_KINDS`); BentoML's
      ERROR record with the pydantic traceback is dropped. Client errors never page: they are the
      caller's to fix, and a bad client must not look like a failing service.
    """

    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app, self.paths = app, paths
        bentoml_log = logging.getLogger(BENTOML_REQUEST_LOGGER)
        if not any(isinstance(f, _ClientErrorTracebacks) for f in bentoml_log.filters):
            bentoml_log.addFilter(_ClientErrorTracebacks())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1").strip()
        current = [given if REQUEST_ID.match(given) else uuid.uuid4().hex]
        token = _CURRENT_ID.set(current)
        path = scope.get("path", "").rstrip("/")
        status, body = 0, bytearray()

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", current[0].encode())]}
            elif 400 <= status < 500 and path in self.paths and len(body) < 4096:
                body.extend(message.get("body", b"")[:4096])
            await send(message)

        try:
            await self.app(scope, receive, answer)
        finally:
            _CURRENT_ID.reset(token)
        if 400 <= status < 500 and path in self.paths:
            self._client_error(path, status, bytes(body), current[0])

    @staticmethod
    def _client_error(path: str, status: int, body: bytes, rid: str) -> None:
        from mlsd.serving import metrics

        kind = CLIENT_ERROR_KINDS.get(status, f"http_{status}")
        metrics.ERRORS.labels("none", kind).inc()
        try:
            message = str(json.loads(body).get("error", ""))
        except (ValueError, AttributeError):
            message = body.decode(errors="replace")
        log.warning("client error %d %s on %s (request_id %s): %s", status, kind, path, rid, message[:500])
