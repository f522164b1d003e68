"""HTTP pieces the scoring service adds to BentoML's server: a body limit, JSON only, JSON errors,
and an optional bearer token on the endpoints that score or change what serves."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


PROTECTED_PATHS = ("/predict", "/predict_batch", "/rollout")
"""What a bearer token guards: scoring (it reads features) and the rollout reload. Health,
readiness and /metrics stay open for load balancers and Prometheus."""


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
