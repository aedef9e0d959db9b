"""``cag policy consent|dnc|suspend|resume``: one-off changes to consents, DNC and statuses (SPEC §9)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.cli.policy_common import (
    EXIT_FAIL,
    EXIT_OK,
    _command,
    _err,
    _parse_time,
    _redis_options,
    _region,
    _run,
    _UsageError,
)
from policy.loader import RowError, validate_row
from policy.model import Consent, DncEntry

if TYPE_CHECKING:
    from policy.store import PolicyStore


def _cmd_consent_grant(args: argparse.Namespace) -> int:
    """Same validation as a consents file row (number normalised, expiry after grant)."""
    row: dict[str, Any] = {
        "token": args.token,
        "callee": args.callee,
        "enterprise_id": args.enterprise_id,
        "purpose": args.purpose,
        "granted_at": _parse_time(args.granted_at, "--granted-at") if args.granted_at else datetime.now(UTC),
        "expires_at": _parse_time(args.expires_at, "--expires-at") if args.expires_at else None,
        "max_calls": args.max_calls,
        "evidence_ref": args.evidence_ref,
    }
    try:
        consent = validate_row("consents", row, region=_region(args))
    except RowError as e:
        raise _UsageError("; ".join(e.reasons)) from None
    assert isinstance(consent, Consent)

    async def body(store: PolicyStore) -> int:
        await store.grant_consent(consent)
        return EXIT_OK

    rc = _run(args, body)
    if rc == EXIT_OK:
        print(f"granted consent {consent.token} for {consent.callee} to {consent.enterprise_id}")
    return rc


def _cmd_consent_revoke(args: argparse.Namespace) -> int:
    at = _parse_time(args.at, "--at") if args.at else datetime.now(UTC)

    async def body(store: PolicyStore) -> int:
        if not await store.revoke_consent(args.token, at):
            _err(args, f"unknown consent token {args.token!r}")
            return EXIT_FAIL
        print(f"revoked consent {args.token} at {at.isoformat()}")
        return EXIT_OK

    return _run(args, body)


def _cmd_dnc_add(args: argparse.Namespace) -> int:
    row = {
        "number": args.number,
        "scope": args.scope,
        "registered_at": _parse_time(args.registered_at, "--registered-at") if args.registered_at else datetime.now(UTC),
    }
    try:
        entry = validate_row("dnc", row, region=_region(args))
    except RowError as e:
        raise _UsageError("; ".join(e.reasons)) from None
    assert isinstance(entry, DncEntry)

    async def body(store: PolicyStore) -> int:
        await store.dnc_add(entry)
        print(f"added {entry.number} to the do-not-call list (scope {entry.scope})")
        return EXIT_OK

    return _run(args, body)


def _cmd_dnc_remove(args: argparse.Namespace) -> int:
    from policy.numbers import normalize_number

    number = normalize_number(args.number, _region(args))
    if number is None:
        raise _UsageError(f"not a phone number: {args.number!r}")

    async def body(store: PolicyStore) -> int:
        if not await store.dnc_remove(number):
            _err(args, f"{number} is not on the do-not-call list")
            return EXIT_FAIL
        print(f"removed {number} from the do-not-call list")
        return EXIT_OK

    return _run(args, body)


# ---------------------------------------------------------------- suspend / resume


def _cmd_status(args: argparse.Namespace) -> int:
    """Suspend or resume one trunk or enterprise (manual R9); a blacklisted enterprise is not resumed."""
    status = "suspended" if args.cmd_name.endswith("suspend") else "active"
    cause = getattr(args, "cause", None)

    async def body(store: PolicyStore) -> int:
        if args.target == "enterprise":
            current = await store.get_ref("enterprises", args.id)
            if current is not None and getattr(current, "status", None) == "blacklisted":
                # The bad-actor list (R10) is carrier data, changed by loading it: neither a
                # resume nor a suspend (which would downgrade it to "suspended") may touch it.
                if status == "suspended":
                    _err(args, f"enterprise {args.id} is blacklisted (already blocked); not changed")
                    return EXIT_OK
                _err(args, f"enterprise {args.id} is blacklisted; change its status with `cag policy load`")
                return EXIT_FAIL
        ok = await store.set_status(args.target, args.id, status, cause=cause, at=datetime.now(UTC))
        if not ok:
            _err(args, f"unknown {args.target} {args.id!r}")
            return EXIT_FAIL
        verb = "suspended" if status == "suspended" else "resumed"
        print(f"{verb} {args.target} {args.id}" + (f" ({cause})" if cause else ""))
        return EXIT_OK

    return _run(args, body)


# ---------------------------------------------------------------- explain


def register(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``consent``, ``dnc``, ``suspend`` and ``resume`` under ``cag policy``."""
    consent = psub.add_parser("consent", help="grant or revoke one consent")
    csub = consent.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")
    p = csub.add_parser("grant", help="grant (or re-grant) a consent token")
    p.add_argument("--token", required=True)
    p.add_argument("--callee", required=True, help="the consenting number")
    p.add_argument("--enterprise-id", dest="enterprise_id", required=True)
    p.add_argument("--purpose", default=None, help="default callback")
    p.add_argument("--granted-at", dest="granted_at", default=None, help="ISO 8601 (default now)")
    p.add_argument("--expires-at", dest="expires_at", default=None, help="ISO 8601 (default never)")
    p.add_argument("--max-calls", dest="max_calls", type=int, default=None, help="default unlimited")
    p.add_argument("--evidence-ref", dest="evidence_ref", default=None, help="where the consent evidence is kept")
    p.add_argument("--region", default=None, help=argparse.SUPPRESS)
    _redis_options(p)
    p.set_defaults(func=_command("policy consent grant", _cmd_consent_grant))
    p = csub.add_parser("revoke", help="revoke a consent (effective on the next INVITE)")
    p.add_argument("token", metavar="TOKEN")
    p.add_argument("--at", default=None, help="ISO 8601 (default now)")
    _redis_options(p)
    p.set_defaults(func=_command("policy consent revoke", _cmd_consent_revoke))

    dnc = psub.add_parser("dnc", help="add or remove a do-not-call registration")
    dsub = dnc.add_subparsers(dest="dnc_command", required=True, metavar="COMMAND")
    p = dsub.add_parser("add", help="register a number as do-not-call")
    p.add_argument("number", metavar="NUMBER")
    p.add_argument("--scope", choices=["all", "commercial"], default="all")
    p.add_argument("--registered-at", dest="registered_at", default=None, help="ISO 8601 (default now)")
    p.add_argument("--region", default=None, help=argparse.SUPPRESS)
    _redis_options(p)
    p.set_defaults(func=_command("policy dnc add", _cmd_dnc_add))
    p = dsub.add_parser("remove", help="remove a do-not-call registration")
    p.add_argument("number", metavar="NUMBER")
    p.add_argument("--region", default=None, help=argparse.SUPPRESS)
    _redis_options(p)
    p.set_defaults(func=_command("policy dnc remove", _cmd_dnc_remove))

    for verb, helptext in (("suspend", "suspend a trunk or enterprise"), ("resume", "resume a suspended trunk or enterprise")):
        p = psub.add_parser(verb, help=helptext)
        p.add_argument("target", choices=["enterprise", "trunk"])
        p.add_argument("id", metavar="ID")
        if verb == "suspend":
            p.add_argument("--cause", default=None, help="why (shown by explain)")
        _redis_options(p)
        p.set_defaults(func=_command(f"policy {verb}", _cmd_status))
