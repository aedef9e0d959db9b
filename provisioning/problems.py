"""RFC 9457 problem details: every error the API returns has one shape.

A client (a CRM, the complaint desk's tool) reads ``status`` and ``title``
for what went wrong and, on 422, ``errors`` for which field — one entry per
bad field, named as in the request body (``callee``, ``expires_at``) or the
query (``query.since``), so a form can highlight each at once.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """Raised by a handler; becomes the problem response (the error carries its answer)."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail or TITLES.get(status, ""))
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))


def body(status: int, detail: str | None = None, errors: list[dict[str, str]] | None = None,
         instance: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status}
    if detail:
        out["detail"] = detail
    if instance:
        out["instance"] = instance
    if errors is not None:
        out["errors"] = errors
    return out


def response(p: Problem, instance: str | None = None) -> JSONResponse:
    return JSONResponse(body(p.status, p.detail, p.errors, instance), status_code=p.status,
                        headers=p.headers, media_type=MEDIA_TYPE)


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """pydantic's location -> the field as the client wrote it (``body`` dropped)."""
    parts = [str(x) for x in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_errors(errors: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for e in errors:
        msg = str(e.get("msg", "invalid"))
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        out.append({"field": field_name(tuple(e.get("loc", ()))), "message": msg})
    return out or [{"field": "body", "message": "invalid request"}]


def row_errors(reasons: list[str]) -> list[dict[str, str]]:
    """``policy.loader.RowError`` reasons (``field: message``) -> problem errors."""
    out = []
    for r in reasons:
        field, sep, msg = r.partition(": ")
        if not sep:  # a whole-record rule ("expires_at must be after granted_at"): its first word
            field, msg = r.split(" ", 1)[0], r
            if not field.isidentifier():
                field = "body"
        out.append({"field": field, "message": msg})
    return out
