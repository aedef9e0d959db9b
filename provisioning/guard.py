"""The raw ASGI guard in front of the provisioning API: the body limit (413) and the request metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI

from provisioning import metrics, problems

log = logging.getLogger("cag.api")

MAX_BODY = 64 * 1024

FastHandler = Callable[[dict[str, Any], bytes, Any], Awaitable[bool]]


class _Guard:
    """Raw ASGI wrapper: the 64 KiB body limit (413) and the request metrics.

    Raw ASGI, not a Starlette middleware class: it costs a few µs per request,
    and it sees the status even of answers the framework makes itself.
    """

    def __init__(self, app: FastAPI, fast: dict[tuple[str, str], FastHandler] | None = None) -> None:
        self.app = app
        self.fast = fast or {}  # (method, path) -> handler(scope, body, send) -> answered?
        self.state = app.state  # tests reach app.state through the wrapper

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[arg-type]
            return
        start = time.perf_counter()
        status = [500]
        started = [False]
        label = None

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > MAX_BODY:
                await self._too_large(scope, send_wrapper)
                return
            # Read the whole body first (at most 64 KiB + one chunk), then hand it on:
            # an oversized chunked body is refused before the framework parses any of it.
            chunks: list[bytes] = []
            seen = 0
            more = scope.get("method") in ("POST", "PUT", "PATCH", "DELETE")
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # client went away
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > MAX_BODY:
                    await self._too_large(scope, send_wrapper)
                    return
                chunks.append(chunk)
                more = bool(message.get("more_body"))
            fast = self.fast.get((scope.get("method", ""), scope.get("path", "")))
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            try:
                if fast is not None:  # a route's fast path (provisioning.app.consent_fast): it answers, or
                    label = scope["path"]  # leaves the request to the framework untouched
                    if await fast(scope, b"".join(chunks), send_wrapper):
                        return
                    label = None
                await self.app(scope, replay, send_wrapper)  # type: ignore[arg-type]
            except Exception as e:
                log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
                if status[0] == 500 and not started[0]:
                    await _send_problem(send_wrapper, problems.body(500, f"internal error ({type(e).__name__})"), 500)
        finally:
            if label is None:
                label = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            metrics.REQUESTS.labels(label, method if method in _METHODS else "other", str(status[0])).inc()
            metrics.SECONDS.labels(label).observe(time.perf_counter() - start)

    @staticmethod
    async def _too_large(scope: dict[str, Any], send: Any) -> None:
        await _send_problem(send, problems.body(413, f"request body over {MAX_BODY} bytes", instance=scope.get("path")),
                            413)


_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})  # bounded label


def _content_length(scope: dict[str, Any]) -> int | None:
    for k, v in scope.get("headers", ()):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def _send_problem(send: Any, payload: dict[str, Any], status: int) -> None:
    import json

    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", problems.MEDIA_TYPE.encode()), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})
