"""Decisions and the stable reason codes of SPEC §5.

A rejection is a value, not an exception: the gateway turns any ``Decision``
into a SIP response in one place (``gateway.proxy.shared.refusal``; the
status phrases are ``gateway.sip.PHRASES``), and
``cag explain`` prints the same value as JSON. The reason code strings are a
public contract (carriers grep for them in logs and the Reason header), so
they are listed once here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, final

Outcome = Literal["pass", "fail", "skip"]

# reason code -> default SIP status (SPEC §5). Configurable overrides (603 vs
# 608, 480 for time-based rejections, 403 for unknown sources) are applied by
# ``ResponseMap``.
DEFAULT_SIP_CODES: dict[str, int] = {
    "malformed": 400,
    # A well-formed Request-URI whose user is no dialable number (issue 15 finding 8):
    # 404, the user does not exist here (RFC 3261 §21.4.5). Not 484: that asks the
    # caller to send more digits, and "alice" will not become a number with more.
    # Not 400 either: the syntax is fine, so it is a decision (audited, shadow-able).
    "callee_invalid": 404,
    "too_many_hops": 483,
    "loop_detected": 482,
    "unknown_source": 0,  # dropped silently by default
    "trunk_suspended": 403,
    "enterprise_suspended": 403,
    "enterprise_blacklisted": 403,
    "licence_expired": 403,
    "caller_missing": 433,
    "caller_anonymous": 433,
    "caller_identity_mismatch": 403,
    "caller_subscriber_number": 403,
    "caller_not_filed": 403,
    "caller_filing_inactive": 403,
    "caller_outbound_disabled": 403,
    "caller_not_owned": 403,
    "caller_length_altered": 403,
    "identity_missing": 428,
    "identity_invalid": 438,
    "purpose_marketing": 608,
    "purpose_not_allowed": 608,
    "consent_missing": 608,
    "consent_unknown": 608,
    "consent_other_callee": 608,
    "consent_other_enterprise": 608,
    "consent_expired": 608,
    "consent_revoked": 608,
    "consent_exhausted": 608,
    "callee_dnc": 608,
    "quiet_hours": 603,
    "callee_daily_cap": 603,
    "callee_total_daily_cap": 603,
    "caller_rate": 603,
    "trunk_rate": 603,
    "trunk_concurrent": 603,
    "store_unavailable": 503,
    "overload": 503,
}

REASON_CODES: frozenset[str] = frozenset(DEFAULT_SIP_CODES)

# Families, so a configuration switch can change a whole family's status.
CONSENT_FAMILY = frozenset(
    {
        "purpose_marketing",
        "purpose_not_allowed",
        "consent_missing",
        "consent_unknown",
        "consent_other_callee",
        "consent_other_enterprise",
        "consent_expired",
        "consent_revoked",
        "consent_exhausted",
        "callee_dnc",
    }
)
TIME_FAMILY = frozenset(
    {
        "quiet_hours",
        "callee_daily_cap",
        "callee_total_daily_cap",
        "caller_rate",
        "trunk_rate",
        "trunk_concurrent",
    }
)
# Rejections that count towards an enterprise's automatic restriction (R6/R9).
UNCONSENTED = frozenset(
    {
        "consent_missing",
        "consent_unknown",
        "consent_other_callee",
        "consent_other_enterprise",
        "consent_expired",
        "consent_revoked",
        "consent_exhausted",
    }
)


# Check and Decision: immutable values, built about 20 times per decision.
# Not ``frozen=True``: mypyc keeps a frozen dataclass's ``__init__`` as generated
# Python calling ``object.__setattr__`` per field (~600 ns per Check), where an
# explicit ``__init__`` on ``Final`` fields compiles to direct slot stores
# (~30 ns); docs/perf-objects-2026-12-07.md. Immutability stays guarded: mypy
# rejects any assignment to a ``Final`` field, and the compiled class has no
# setter for one (``AttributeError``). ``dataclass`` still supplies ``__eq__``,
# ``__repr__``, ``__hash__`` (``unsafe_hash``: safe, nothing can change) and
# ``dataclasses.replace`` (shadow mode, ``explain``). Keep ``__init__``'s
# parameters, in order, the fields' names: ``replace`` passes every field by name.
@final
@dataclass(slots=True, init=False, unsafe_hash=True)
class Check:
    """One rule's verdict, kept so ``explain`` can show every check, not only the first failure."""

    name: Final[str]
    outcome: Final[Outcome]
    reason: Final[str | None]
    detail: Final[str]
    retry_after: Final[int | None]  # seconds, for the time-based checks (quiet hours, caps)

    def __init__(
        self,
        name: str,
        outcome: Outcome,
        reason: str | None = None,
        detail: str = "",
        retry_after: int | None = None,
    ) -> None:
        self.name = name
        self.outcome = outcome
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


@final
@dataclass(slots=True, init=False, unsafe_hash=True)
class Decision:
    """The verdict on one call attempt (an immutable value; see ``Check`` for why not frozen)."""

    admit: Final[bool]
    reason: Final[str]  # "admitted" when admitted, else a code of REASON_CODES
    sip_code: Final[int]  # 0 for admitted, or for a silent drop
    retry_after: Final[int | None]
    checks: Final[tuple[Check, ...]]
    trunk_id: Final[str | None]
    enterprise_id: Final[str | None]
    caller: Final[str | None]  # normalised
    callee: Final[str | None]  # normalised
    consent_token: Final[str | None]
    evidence_ref: Final[str | None]
    fail_open: Final[bool]  # admitted with the Redis-backed checks skipped
    shadow_reject: Final[str | None]  # shadow mode: the reason it would have been rejected

    def __init__(
        self,
        admit: bool,
        reason: str,
        sip_code: int,
        retry_after: int | None = None,
        checks: tuple[Check, ...] = (),
        trunk_id: str | None = None,
        enterprise_id: str | None = None,
        caller: str | None = None,
        callee: str | None = None,
        consent_token: str | None = None,
        evidence_ref: str | None = None,
        fail_open: bool = False,
        shadow_reject: str | None = None,
    ) -> None:
        self.admit = admit
        self.reason = reason
        self.sip_code = sip_code
        self.retry_after = retry_after
        self.checks = checks
        self.trunk_id = trunk_id
        self.enterprise_id = enterprise_id
        self.caller = caller
        self.callee = callee
        self.consent_token = consent_token
        self.evidence_ref = evidence_ref
        self.fail_open = fail_open
        self.shadow_reject = shadow_reject

    @property
    def decision(self) -> str:
        return "admit" if self.admit else "reject"


@dataclass(frozen=True, slots=True)
class ResponseMap:
    """Operator choices of SPEC §5 ("603 configurable", "480 configurable", "403 for unknown")."""

    consent_code: int = 608  # or 603
    time_code: int = 603  # or 480
    unknown_source_code: int = 0  # 0 = drop silently, or 403
    default_retry_after: int = 1

    def code_for(self, reason: str) -> int:
        if reason in CONSENT_FAMILY:
            return self.consent_code
        if reason in TIME_FAMILY:
            return self.time_code
        if reason == "unknown_source":
            return self.unknown_source_code
        return DEFAULT_SIP_CODES[reason]


def reject(
    reason: str,
    *,
    retry_after: int | None = None,
    checks: tuple[Check, ...] = (),
    responses: ResponseMap | None = None,
    **context: str | None,
) -> Decision:
    """A rejection with the configured status for ``reason``."""
    code = (responses or ResponseMap()).code_for(reason)
    return Decision(
        admit=False,
        reason=reason,
        sip_code=code,
        retry_after=retry_after,
        checks=checks,
        **context,  # type: ignore[arg-type]
    )


def admitted(checks: tuple[Check, ...] = (), **context: object) -> Decision:
    return Decision(admit=True, reason="admitted", sip_code=0, checks=checks, **context)  # type: ignore[arg-type]


@dataclass(slots=True)
class ExplainReport:
    """``cag explain`` output; a plain dict when serialised."""

    decision: Decision
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        d = self.decision
        return {
            "decision": d.decision,
            "reason": d.reason,
            "sip_code": d.sip_code,
            "retry_after": d.retry_after,
            "trunk_id": d.trunk_id,
            "enterprise_id": d.enterprise_id,
            "caller": d.caller,
            "callee": d.callee,
            "checks": [
                {"name": c.name, "outcome": c.outcome, "reason": c.reason, "detail": c.detail}
                for c in d.checks
            ],
            **self.extra,
        }
