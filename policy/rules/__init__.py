"""The admission rules of SPEC §2 as pure functions, and their order (SPEC §5).

A call is decided in two halves so the hot path makes one Redis round trip:

1. ``evaluate_local`` runs every check that needs only the in-memory
   reference data (trunk → caller ID → filing → purpose) and computes up
   front what the store needs (callee-local day, cap limits) and the
   quiet-hours verdict, so the store's script is told not to count a call
   that quiet hours will refuse (a rejected call consumes no quota).
2. The store runs consent, DNC and caps atomically (its script mirrors
   ``check_consent``/``check_dnc``/``check_cap``) and reports a ``StoreVerdict``.
3. ``finish`` applies SPEC order — first failure decides — and builds the
   ``Decision`` with the configured SIP status.

A call that declares no purpose has the consent's purpose as its effective
purpose (R1): only the store knows it, so the consent check judges it (never
marketing, one of the enterprise's purposes) and ``finish`` reports a failure
of it under the purpose check.

Nothing here does I/O or reads a clock: ``now`` is always an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from policy.decision import Check, Decision, ResponseMap
from policy.model import CallAttempt, Consent, DncEntry, Enterprise, FrequencyCap, QuietHours, Trunk
from policy.numbers import normalize_number, number_timezone
from policy.rules._util import failed, passed, skipped
from policy.rules.caller_id import caller_of, check_caller_id
from policy.rules.caps import CAP_NAMES, CapLimits, callee_day, check_caps
from policy.rules.consent import check_consent, check_dnc
from policy.rules.filing import check_filing
from policy.rules.purpose import check_purpose, normalize_purpose
from policy.rules.quiet_hours import check_quiet_hours
from policy.rules.refdata import RefData
from policy.rules.trunk import check_trunk

__all__ = [
    "CAP_NAMES",
    "CapLimits",
    "LocalVerdict",
    "RefData",
    "RuleConfig",
    "StoreVerdict",
    "caller_of",
    "evaluate_local",
    "explain",
    "finish",
    "reference_store_verdict",
]

# The check names in SPEC order, as explain lists them.
CHECK_ORDER: tuple[str, ...] = (
    "trunk",
    "callee",
    "caller_id",
    "filing",
    "purpose",
    "consent",
    "dnc",
    "quiet_hours",
    *CAP_NAMES,
)


@dataclass(frozen=True)
class RuleConfig:
    """The policy knobs the rules read (a slice of the gateway's settings).

    The defaults below are immutable (frozen pydantic models / dataclasses), so
    sharing one instance between configs is safe, hence the RUF009 waivers.
    """

    region: str = "CN"  # default region for number normalisation (SPEC §3)
    default_tz: str = (
        "Asia/Shanghai"  # carrier's day (licences) and callees phonenumbers cannot place
    )
    default_quiet_hours: QuietHours = QuietHours.parse("21:00-08:00")  # noqa: RUF009 - R8; an enterprise's replaces it
    caps: FrequencyCap = FrequencyCap.model_validate({})  # noqa: RUF009 - R6 defaults
    stir_shaken: str = "off"  # "off" | "require" (R7, shape check only)
    responses: ResponseMap = ResponseMap()  # noqa: RUF009 - reason → SIP status choices (SPEC §5)


@dataclass(frozen=True)
class LocalVerdict:
    """The in-memory half of a decision."""

    checks: tuple[Check, ...]  # in-memory checks evaluated so far, SPEC order
    failed: Decision | None  # first failing in-memory check, else None
    trunk: Trunk | None
    enterprise: Enterprise | None
    caller: str | None  # normalised
    callee: str | None  # normalised
    quiet: Check  # quiet-hours verdict computed up front (order is applied in finish)
    day: str  # callee-local day key "YYYYMMDD"
    day_ttl: int  # seconds to the end of that day
    limits: CapLimits = field(default_factory=CapLimits)
    callee_tz: str = "Asia/Shanghai"


@dataclass(frozen=True)
class StoreVerdict:
    """What the Redis side reports; its script mirrors check_consent/check_dnc/check_cap."""

    consent: Check
    dnc: Check
    caps: tuple[Check, ...]  # SPEC order (CAP_NAMES); unevaluated ones outcome "skip"
    evidence_ref: str | None = None
    consent_purpose: str | None = None


def _first_failure(checks: tuple[Check, ...]) -> Check | None:
    for c in checks:
        if c.outcome == "fail":
            return c
    return None


def _reject(
    failing: Check, checks: tuple[Check, ...], cfg: RuleConfig, context: dict[str, str | None]
) -> Decision:
    reason = failing.reason or "malformed"
    return Decision(
        admit=False,
        reason=reason,
        sip_code=cfg.responses.code_for(reason),
        retry_after=failing.retry_after,
        checks=checks,
        trunk_id=context["trunk_id"],
        enterprise_id=context["enterprise_id"],
        caller=context["caller"],
        callee=context["callee"],
        consent_token=context["consent_token"],
        evidence_ref=context["evidence_ref"],
    )


def _verdict(
    checks: list[Check],
    call: CallAttempt,
    trunk: Trunk | None,
    enterprise: Enterprise | None,
    caller: str | None,
    callee: str | None,
    callee_tz: str,
    now: datetime,
    cfg: RuleConfig,
    all_checks: bool,
) -> LocalVerdict:
    """``evaluate_local``'s verdict on the checks run so far.

    A module function, not a closure inside ``evaluate_local``: in the
    compiled build a nested function shares an environment object with its
    siblings, a reference cycle per decision left to the cyclic GC.
    """
    enterprise_id = trunk.enterprise_id if trunk is not None else None
    evaluated = tuple(checks)
    failing = _first_failure(evaluated)
    run_quiet = failing is None or all_checks
    if run_quiet and callee is not None:
        windows = cfg.default_quiet_hours
        if enterprise is not None and enterprise.quiet_hours is not None:
            windows = enterprise.quiet_hours
        quiet = check_quiet_hours(callee, windows, now, callee_tz)
    else:
        quiet = skipped("quiet_hours", "not evaluated")
    day, ttl = callee_day(callee_tz, now)
    failed_decision = None
    if failing is not None:
        failed_decision = _reject(
            failing,
            evaluated,
            cfg,
            {
                "trunk_id": trunk.trunk_id if trunk is not None else None,
                "enterprise_id": enterprise_id,
                "caller": caller,
                "callee": callee,
                "consent_token": call.consent_token,
                "evidence_ref": None,
            },
        )
    return LocalVerdict(
        checks=evaluated,
        failed=failed_decision,
        trunk=trunk,
        enterprise=enterprise,
        caller=caller,
        callee=callee,
        quiet=quiet,
        day=day,
        day_ttl=ttl,
        limits=CapLimits.for_call(enterprise, trunk, cfg.caps),
        callee_tz=callee_tz,
    )


def evaluate_local(
    call: CallAttempt, ref: RefData, now: datetime, cfg: RuleConfig, *, all_checks: bool = False
) -> LocalVerdict:
    """Run the in-memory checks in SPEC order; stop at the first failure unless ``all_checks``.

    Besides SPEC's trunk → caller_id → filing → purpose there is a "callee"
    check right after the trunk: a Request-URI without a dialable number is
    ``callee_invalid`` (404). The message is well formed, so this is a policy
    answer like any other (audited, and admitted in shadow mode), not the
    SIP layer's ``malformed``. It comes after the trunk so an unknown source
    is still dropped silently rather than answered.
    """
    trunk = ref.trunk_for(call.source_ip)
    enterprise = ref.enterprises.get(trunk.enterprise_id) if trunk is not None else None
    callee = normalize_number(call.callee, cfg.region)
    caller = caller_of(call, cfg.region)
    callee_tz = number_timezone(callee, cfg.default_tz) if callee else cfg.default_tz
    enterprise_id = trunk.enterprise_id if trunk is not None else None

    checks: list[Check] = []
    go_on = not all_checks  # stop at the first failure unless all_checks

    checks.append(check_trunk(trunk, enterprise, now, cfg.default_tz))
    if go_on and checks[-1].outcome == "fail":
        return _verdict(checks, call, trunk, enterprise, caller, callee, callee_tz, now, cfg, all_checks)
    if callee is None:
        checks.append(
            failed("callee", "callee_invalid", f"Request-URI user {call.callee!r} is not a number")
        )
    else:
        checks.append(Check("callee", "pass", None, f"callee {callee} ({callee_tz})"))
    if go_on and checks[-1].outcome == "fail":
        return _verdict(checks, call, trunk, enterprise, caller, callee, callee_tz, now, cfg, all_checks)
    checks.append(
        check_caller_id(call, ref.filings, region=cfg.region, stir_shaken=cfg.stir_shaken)
    )
    if go_on and checks[-1].outcome == "fail":
        return _verdict(checks, call, trunk, enterprise, caller, callee, callee_tz, now, cfg, all_checks)
    if caller is None:
        checks.append(skipped("filing", "no caller number"))
    else:
        checks.append(check_filing(caller, enterprise_id, ref))
    if go_on and checks[-1].outcome == "fail":
        return _verdict(checks, call, trunk, enterprise, caller, callee, callee_tz, now, cfg, all_checks)
    if enterprise is None:
        checks.append(skipped("purpose", "no enterprise"))
    else:
        checks.append(check_purpose(call.purpose, enterprise))
    return _verdict(checks, call, trunk, enterprise, caller, callee, callee_tz, now, cfg, all_checks)


_FAIL_OPEN_SKIPS: tuple[Check, ...] = tuple(
    skipped(name, "fail-open: store not consulted") for name in ("consent", "dnc", *CAP_NAMES)
)


_PURPOSE_REASONS = frozenset({"purpose_marketing", "purpose_not_allowed"})


def _effective_purpose(check: Check, store: StoreVerdict) -> Check:
    """The purpose check of a call that declared none, judged on the consent's purpose.

    The store's consent check judges the effective purpose (the consent's, here):
    a failure for it is the purpose check's failure, reported there so the SPEC
    order (purpose before consent) shows in ``explain`` and decides first.
    """
    if check.name != "purpose" or check.outcome != "pass":
        return check
    granted = store.consent_purpose
    if store.consent.reason in _PURPOSE_REASONS:
        return failed(
            "purpose", store.consent.reason, f"no declared purpose; {store.consent.detail}"
        )
    if store.consent.outcome == "pass" and granted:
        return passed("purpose", f"no declared purpose; consent's purpose {granted}")
    return check


def finish(
    call: CallAttempt,
    local: LocalVerdict,
    store: StoreVerdict | None,
    cfg: RuleConfig,
    *,
    all_checks: bool = False,
) -> Decision:
    """Combine both halves in SPEC order: the first failing check decides.

    ``store`` None is fail-open (SPEC §5): consent, DNC and caps are skipped,
    the in-memory checks and quiet hours still apply, and an admission is
    marked ``fail_open``. With ``all_checks`` the decision carries every
    check (for ``explain``); otherwise those up to the deciding one.
    """
    if local.failed is not None and not all_checks:
        return local.failed
    if store is None:
        remote = _FAIL_OPEN_SKIPS
    else:
        caps = store.caps
        if len(caps) < len(CAP_NAMES):
            seen = {c.name for c in caps}
            caps = (*caps, *(skipped(n, "not evaluated") for n in CAP_NAMES if n not in seen))
        remote = (store.consent, store.dnc, *caps)
    checks = local.checks
    if store is not None and normalize_purpose(call.purpose) is None:
        checks = tuple(_effective_purpose(c, store) for c in checks)
    ordered = (*checks, remote[0], remote[1], local.quiet, *remote[2:])

    context: dict[str, str | None] = {
        "trunk_id": local.trunk.trunk_id if local.trunk is not None else None,
        "enterprise_id": local.trunk.enterprise_id if local.trunk is not None else None,
        "caller": local.caller,
        "callee": local.callee,
        "consent_token": call.consent_token,
        "evidence_ref": store.evidence_ref if store is not None else None,
    }
    for i, c in enumerate(ordered):
        if c.outcome == "fail":
            return _reject(c, ordered if all_checks else ordered[: i + 1], cfg, context)
    return Decision(
        admit=True,
        reason="admitted",
        sip_code=0,
        checks=ordered,
        trunk_id=context["trunk_id"],
        enterprise_id=context["enterprise_id"],
        caller=local.caller,
        callee=local.callee,
        consent_token=call.consent_token,
        evidence_ref=context["evidence_ref"],
        fail_open=store is None,
    )


def reference_store_verdict(
    local: LocalVerdict,
    call: CallAttempt,
    now: datetime,
    *,
    consent: Consent | None,
    token_callee: str | None = None,
    used: int = 0,
    dnc: DncEntry | None = None,
    counts: Mapping[str, int] | None = None,
) -> StoreVerdict:
    """What the store's script must answer for this state: the Python reference it mirrors.

    ``counts`` maps each cap name to the count its window already holds. Caps
    are evaluated in order until the first that fails; the rest are "skip",
    as the script does (it stops counting at the first refusal).
    """
    callee = local.callee or ""
    enterprise_id = local.trunk.enterprise_id if local.trunk is not None else ""
    c = check_consent(
        consent,
        token=call.consent_token,
        callee=callee,
        enterprise_id=enterprise_id,
        declared_purpose=call.purpose,
        allowed_purposes=local.enterprise.purposes if local.enterprise is not None else (),
        used=used,
        now=now,
        token_callee=token_callee,
    )
    purpose = normalize_purpose(consent.purpose) if consent is not None else None
    d = check_dnc(dnc, consent_ok=c.outcome == "pass", consent_purpose=purpose)
    counts = counts or {}
    caps = check_caps({n: counts.get(n, 0) for n in CAP_NAMES}, local.limits, local.day_ttl)
    return StoreVerdict(
        consent=c,
        dnc=d,
        caps=caps,
        evidence_ref=(consent.evidence_ref or None) if consent is not None else None,
        consent_purpose=purpose,
    )


def explain(
    call: CallAttempt,
    ref: RefData,
    now: datetime,
    cfg: RuleConfig,
    store: StoreVerdict | None = None,
) -> Decision:
    """Every check's outcome for ``cag explain`` (SPEC §5); touches nothing."""
    local = evaluate_local(call, ref, now, cfg, all_checks=True)
    return finish(call, local, store, cfg, all_checks=True)
