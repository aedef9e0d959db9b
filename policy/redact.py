"""Keep secrets out of log lines, error messages and settings dumps.

A Redis URL may carry a password (``redis://:secret@host``,
``rediss://user:secret@host``, ``?password=secret``). Anything that prints a
URL goes through :func:`redact_url` first; settings dumps through
:func:`redact_settings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SECRET_KEYS", "redact_settings", "redact_url"]

# userinfo "user:password@" or ":password@" right after the scheme.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")
_QUERY_PW = re.compile(r"(?P<key>[?&](?:password|pass|pwd)=)[^&#]*", re.IGNORECASE)
SECRET_KEYS = frozenset({"rr_secret", "redis_password", "password"})


def redact_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (user names and hosts kept: they help operators)."""
    if not url:
        return str(url)
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    return _QUERY_PW.sub(lambda m: f"{m['key']}***", out)


def redact_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a settings dump safe to log: secret keys masked, URLs redacted."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in SECRET_KEYS and v:
            out[k] = "***"
        elif isinstance(v, str) and "://" in v:
            out[k] = redact_url(v)
        else:
            out[k] = v
    return out
