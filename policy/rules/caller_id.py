"""Caller-ID authenticity (R7: true, unaltered, not hidden; R5: no subscriber numbers).

Full STIR/SHAKEN verification (fetching the ``info`` certificate, checking its
chain to a trusted STI-CA and the ES256 signature, the ``iat`` freshness and
the orig/dest claims against the INVITE) is out of scope here: this module
runs on the hot path with no I/O. With ``stir_shaken="require"`` it only
insists that an ``Identity`` header is present and well-formed, so a trunk
that strips or mangles it is refused; verification belongs to an upstream
verification service (RFC 8224 §6.2).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Container

from policy.decision import Check
from policy.model import CallAttempt
from policy.numbers import is_subscriber_number, normalize_number
from policy.rules._util import failed, passed

NAME = "caller_id"

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def caller_user(call: CallAttempt) -> str | None:
    """SPEC §3: the P-Asserted-Identity user when present (the trunk asserts it), else From's."""
    return call.pai_user if call.pai_user else call.from_user


def caller_of(call: CallAttempt, region: str = "CN") -> str | None:
    """The normalised caller number, or None when there is no usable number."""
    return normalize_number(caller_user(call), region)


def _is_anonymous(user: str | None) -> bool:
    return user is not None and user.strip().lower() == "anonymous"


def _b64url_json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def identity_shape_error(identity: str) -> str | None:
    """Why an RFC 8224 ``Identity`` header value is not a well-formed SHAKEN PASSporT, or None.

    Shape only: ``<b64url header>.<b64url payload>.<b64url signature>`` (the
    payload may be empty, RFC 8224 compact form), a JSON header with
    ``alg`` ES256, an ``info`` parameter, and ``alg``/``ppt`` parameters, when
    present, equal to ES256 / shaken. The signature is not verified.
    """
    token, _, param_text = identity.strip().partition(";")
    parts = token.strip().split(".")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        return "not three base64url parts"
    if not all(_B64URL.match(p) for p in parts):
        return "not base64url"
    params: dict[str, str] = {}
    for raw in param_text.split(";"):
        name, _, value = raw.strip().partition("=")
        if name:
            params[name.strip().lower()] = value.strip().strip('"')
    if not params.get("info", "").startswith("<"):
        return "no info=<URI> parameter"
    if params.get("alg", "ES256") != "ES256":
        return f"alg {params['alg']!r} is not ES256"
    if params.get("ppt", "shaken").lower() != "shaken":
        return f"ppt {params['ppt']!r} is not shaken"
    try:
        header = _b64url_json(parts[0])
        if parts[1]:
            _b64url_json(parts[1])
    except (binascii.Error, ValueError):
        return "header or payload is not base64url JSON"
    if not isinstance(header, dict) or header.get("alg") != "ES256":
        return "PASSporT header alg is not ES256"
    if header.get("ppt", "shaken") != "shaken":
        return "PASSporT header ppt is not shaken"
    return None


def check_caller_id(
    call: CallAttempt,
    filings: Container[str],
    *,
    region: str = "CN",
    stir_shaken: str = "off",
) -> Check:
    """Is the presented caller ID a real, consistent, presentable number?

    Reason codes:
      ``caller_anonymous``          anonymous URI, user "anonymous" or ``Privacy: id`` (R7: no hidden caller ID)
      ``caller_missing``            no caller user, or one that is not a number (R7: traceable)
      ``caller_identity_mismatch``  PAI and From both present with different numbers (R7: no
                                    altered caller ID); the same number in two formats agrees
      ``identity_missing``          ``stir_shaken="require"`` and no Identity header (R7)
      ``identity_invalid``          Identity header present but malformed (shape only, see module doc)
      ``caller_subscriber_number``  a mobile or fixed subscriber number that is not filed (R5);
                                    a filed number is judged by the filing check instead
    """
    if (
        call.anonymous
        or call.privacy_id
        or _is_anonymous(call.pai_user)
        or _is_anonymous(call.from_user)
    ):
        why = "Privacy: id" if call.privacy_id else "anonymous caller"
        return failed(NAME, "caller_anonymous", why)
    raw = caller_user(call)
    if not raw or not raw.strip():
        return failed(NAME, "caller_missing", "no caller in P-Asserted-Identity or From")
    caller = normalize_number(raw, region)
    if caller is None:
        return failed(NAME, "caller_missing", f"caller {raw!r} is not a number")
    if call.pai_user and call.from_user:
        from_number = normalize_number(call.from_user, region)
        if from_number != caller:
            return failed(
                NAME,
                "caller_identity_mismatch",
                f"P-Asserted-Identity {caller} != From {from_number or call.from_user!r}",
            )
    if stir_shaken == "require":
        if not call.identity:
            return failed(NAME, "identity_missing", "no Identity header")
        problem = identity_shape_error(call.identity)
        if problem is not None:
            return failed(NAME, "identity_invalid", f"Identity header: {problem}")
    if caller not in filings and is_subscriber_number(caller, region):
        return failed(NAME, "caller_subscriber_number", f"{caller} is a subscriber number")
    return passed(NAME, f"caller {caller}")
