"""``cag explain``: why one call would be admitted or rejected, as JSON (SPEC §9)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.cli.policy_common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    _command,
    _parse_time,
    _redis_options,
    _run,
    _settings,
    _UsageError,
)

if TYPE_CHECKING:
    from policy.store import PolicyStore


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Anything printed while deciding goes to stderr: stdout carries only the JSON (SPEC §9)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _call_from_args(args: argparse.Namespace, at: datetime) -> Any:
    from policy.model import CallAttempt

    source = args.source.strip()
    port = 5060
    try:
        ipaddress.ip_address(source)
    except ValueError:
        # Also accept IP:PORT / [v6]:PORT, as a trace shows it.
        from gateway.config import split_host_port

        try:
            host, port = split_host_port(source, source)
            ipaddress.ip_address(host)
        except ValueError:
            raise _UsageError(f"--source: not an IP address: {args.source!r}") from None
        source = host
    caller = args.caller
    anonymous = bool(caller) and caller.strip().lower() in ("anonymous", "anonymous@anonymous.invalid")
    return CallAttempt(
        call_id=f"explain-{uuid.uuid4().hex}",
        branch=f"z9hG4bK-explain-{uuid.uuid4().hex[:16]}",
        source_ip=source,
        source_port=port,
        callee=args.callee,
        from_user=None if anonymous else (caller or None),
        pai_user=args.pai,
        anonymous=anonymous,
        privacy_id=args.privacy,
        consent_token=args.token,
        purpose=args.purpose,
        identity=args.identity,
        received_at=at.timestamp(),
    )


def _cmd_explain(args: argparse.Namespace) -> int:
    """Why would this call be admitted or rejected? Every check, no counter touched."""
    from policy.decision import ExplainReport

    at = _parse_time(args.at, "--at") if args.at else datetime.now(UTC)
    call = _call_from_args(args, at)
    settings = _settings(args)
    if args.redis_url is None and settings.redis_url:
        args.redis_url = settings.redis_url
    if args.state_dir is None and args.config:
        args.state_dir = str(settings.state_dir)
    # An explanation is never a shadow decision: it says what enforcement would do.
    config = dataclasses.replace(settings.engine_config(), shadow=False)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    out: dict[str, object] = {}

    async def body(store: PolicyStore) -> int:
        from policy.engine import AdmissionEngine
        from policy.rules.caller_id import caller_of

        engine = AdmissionEngine(store, config)
        # One call's question: trunks and enterprises, and only the filings this caller can
        # touch (its own, R4's longer and shorter forms), not every filing (issue 14).
        await engine.refcache.load_for_call(caller_of(call, config.rules.region))
        try:
            decision = await engine.explain(call, at)
        finally:
            await engine.stop()
        out.update(ExplainReport(decision, extra={"at": at.isoformat()}).to_json())
        return EXIT_OK if decision.admit else EXIT_FAIL

    with _stdout_to_stderr():
        rc = _run(args, body, unavailable=EXIT_UNAVAILABLE)
    if out:
        print(json.dumps(out, ensure_ascii=False))
    return rc


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``explain`` to the ``cag`` parser."""
    p = sub.add_parser(
        "explain",
        help="why would this call be admitted or rejected (JSON on stdout)",
        description="Run every admission check for one call without touching any counter. "
        "Prints only JSON on stdout; exit 0 admit, 1 reject, 2 usage error, 3 Redis unavailable.",
    )
    p.add_argument("--source", required=True, help="source IP of the INVITE (IP or IP:PORT)")
    p.add_argument("--caller", required=True, help="From user part (the presented number)")
    p.add_argument("--callee", required=True, help="Request-URI user part")
    p.add_argument("--token", default=None, help="X-Consent-Token")
    p.add_argument("--purpose", default=None, help="X-Call-Purpose")
    p.add_argument("--at", default=None, help="decision time, ISO 8601 (default now; no offset = UTC)")
    p.add_argument("--pai", default=None, help="P-Asserted-Identity user part")
    p.add_argument("--privacy", action="store_true", help="the INVITE carries Privacy: id")
    p.add_argument("--identity", default=None, help="RFC 8224 Identity header value")
    _redis_options(p)
    p.set_defaults(func=_command("explain", _cmd_explain))
