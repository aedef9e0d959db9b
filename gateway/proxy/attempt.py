"""SIP → policy: the ``CallAttempt`` an initial INVITE is asked about (SPEC §3).

Raw user parts only: the policy engine normalises numbers, so what the
audit record shows is what the trunk sent.
"""

from __future__ import annotations

from gateway.sip import Request, SipError, Via, header_uri, parse_uri, split_list, user_of
from policy.model import CallAttempt

from .actions import Addr

_PRIVACY_HIDE = frozenset({"id", "user", "header"})
_CALL_HEADERS = frozenset(
    {"from", "p-asserted-identity", "privacy", "x-consent-token", "x-call-purpose", "identity"}
)


def call_attempt(req: Request, top: Via, source: Addr, received_at: float) -> CallAttempt:
    """One pass over the headers; ``received_at`` is wall-clock (the audit record's time)."""
    found: dict[str, str] = {}
    privacy_id = False
    for h in req.headers:
        k = h[1]
        if k in _CALL_HEADERS:
            if k == "privacy":
                for part in h[2].replace(";", " ").replace(",", " ").split():
                    if part.lower() in _PRIVACY_HIDE:
                        privacy_id = True
            elif k not in found:
                found[k] = h[2]
    anonymous = False
    users: list[str | None] = [None, None]
    for i, k in enumerate(("from", "p-asserted-identity")):
        v = found.get(k)
        if v is None:
            continue
        if i and "," in v:
            v = split_list(v)[0]  # the first P-Asserted-Identity value
        try:
            u = parse_uri(header_uri(v))
        except SipError:
            continue
        users[i] = u.user
        if u.host.lower() == "anonymous.invalid" or (u.user or "").lower() == "anonymous":
            anonymous = True
    return CallAttempt(
        call_id=req.call_id,
        branch=top.branch or "",
        source_ip=source[0],
        source_port=source[1],
        callee=user_of(req.uri),
        from_user=users[0],
        pai_user=users[1],
        anonymous=anonymous,
        privacy_id=privacy_id,
        consent_token=found.get("x-consent-token"),
        purpose=found.get("x-call-purpose"),
        identity=found.get("identity"),
        received_at=received_at,
    )
