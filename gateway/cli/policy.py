"""``cag policy …`` and ``cag explain``: the operator's data tools (SPEC §8, §9).

The names, flags and exit codes here are a contract other tools script
against, so they follow SPEC §9 exactly. Every command that talks to Redis
takes ``--redis-url``/``--state-dir`` on its own (leaf) parser, so the
options work after the positional arguments too, and loads the Redis
Function library itself: data can be provisioned before ``serve`` ever ran.

Exit codes: 0 done (``explain``: admitted), 1 refused or failed (bad rows,
unknown id or token; ``explain``: rejected), 2 usage error (argparse's
own code; also bad option values such as an unparseable ``--at``), 3
``explain`` could not decide (Redis unreachable), so a script never takes
an outage for a rejection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policy.loader import LoadError, RowError, load_file, validate_row
from policy.model import KIND_MODELS, Consent, DncEntry, Record

if TYPE_CHECKING:
    from gateway.config import Settings
    from policy.store import PolicyStore

__all__ = ["register"]

log = logging.getLogger(__name__)

KINDS = tuple(KIND_MODELS)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class _UsageError(Exception):
    """A bad option value found after parsing (exit 2, like argparse's own errors)."""


# ---------------------------------------------------------------- settings


def _region(args: argparse.Namespace) -> str:
    """Numbers in files are normalised with the gateway's region, or they would never match."""
    if getattr(args, "region", None):
        return str(args.region)
    if getattr(args, "config", None):
        return _settings(args).region
    return os.environ.get("CAG_REGION") or "CN"


def _settings(args: argparse.Namespace) -> Settings:
    from gateway.config import load_settings

    try:
        return load_settings(getattr(args, "config", None))
    except Exception as e:  # pydantic ValidationError, TOML syntax, missing file
        raise _UsageError(f"bad configuration: {e}") from e


def _redis_url(args: argparse.Namespace) -> str:
    """Flag, then the config file / CAG_REDIS_URL, else the embedded server under the state dir."""
    from gateway.config import resolve_redis_url

    url, state = args.redis_url, args.state_dir
    if getattr(args, "config", None):
        s = _settings(args)
        url = url or s.redis_url
        state = state or s.state_dir
    return resolve_redis_url(url, state)


# ---------------------------------------------------------------- plumbing


def _parse_time(text: str, option: str) -> datetime:
    """ISO 8601; a time without an offset is UTC, as in the data files."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _UsageError(f"{option}: not an ISO 8601 time: {text!r}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _err(args: argparse.Namespace, message: str) -> None:
    print(f"cag {args.cmd_name}: {message}", file=sys.stderr)


async def _with_store(args: argparse.Namespace, body: Callable[[PolicyStore], Awaitable[int]]) -> int:
    """Connect, make sure the Function library is loaded, run ``body``, close."""
    from policy.store import PolicyStore

    store = await PolicyStore.connect(_redis_url(args))
    try:
        await store.ensure_functions()
        return await body(store)
    finally:
        await store.close()


def _run(args: argparse.Namespace, body: Callable[[PolicyStore], Awaitable[int]], *, unavailable: int = EXIT_FAIL) -> int:
    """asyncio.run the body; usage and connection problems become one stderr line and an exit code."""
    from gateway.embedded_redis import EmbeddedRedisError
    from policy.store import StoreError

    try:
        return asyncio.run(_with_store(args, body))
    except _UsageError as e:
        _err(args, str(e))
        return EXIT_USAGE
    except (StoreError, EmbeddedRedisError, OSError) as e:
        _err(args, str(e))
        return unavailable


def _command(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command so its messages name it and usage errors found late still exit 2."""

    def run(args: argparse.Namespace) -> int:
        args.cmd_name = name
        try:
            return func(args)
        except _UsageError as e:
            _err(args, str(e))
            return EXIT_USAGE

    run.__name__ = f"cmd_{name.replace(' ', '_')}"
    run.__doc__ = func.__doc__
    return run


def _redis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        dest="redis_url",
        default=None,
        help="Redis URL (redis://, rediss://, unix://); default $CAG_REDIS_URL, else the embedded server",
    )
    p.add_argument(
        "--state-dir",
        dest="state_dir",
        default=None,
        help="state directory of the embedded server (default $CAG_STATE_DIR or .state)",
    )
    p.add_argument("--config", default=None, help="gateway TOML file (its redis_url, state_dir, region)")


# ---------------------------------------------------------------- policy load / show


def _cmd_load(args: argparse.Namespace) -> int:
    """Validate the whole file first (no Redis needed for that), then write it in one go."""
    path = Path(args.file)
    try:
        records = load_file(args.kind, path, region=_region(args))
    except LoadError as e:
        # Only FILE:LINE: reason lines: scripts and editors parse them; exit 1 says nothing was loaded.
        for line in e.errors:
            print(line, file=sys.stderr)
        return EXIT_FAIL
    if not records and not args.replace:
        print(f"cag policy load: {path} has no data rows: nothing to load", file=sys.stderr)
        print(f"loaded 0 {args.kind} from {path}")
        return EXIT_OK

    async def body(store: PolicyStore) -> int:
        await store.put_records(args.kind, records, replace=args.replace)
        return EXIT_OK

    rc = _run(args, body)
    if rc == EXIT_OK:
        if not records:
            print(f"cag policy load: {path} has no data rows: every {args.kind} record was removed", file=sys.stderr)
        print(f"loaded {len(records)} {args.kind} from {path}{' (replace)' if args.replace else ''}")
    return rc


def _dump(rec: Record) -> str:
    return json.dumps(rec.model_dump(mode="json", exclude_none=True), ensure_ascii=False)


def _cmd_show(args: argparse.Namespace) -> int:
    """Print stored records as JSONL (the loader reads this back)."""
    kind, ident = args.kind, args.id
    if kind in ("consents", "dnc") and not ident:
        raise _UsageError(f"{kind}: give the {'token' if kind == 'consents' else 'number'} to show")

    async def body(store: PolicyStore) -> int:
        found: list[Record] = []
        if kind == "consents":
            c = await store.get_consent(ident)
            found = [c] if c else []
        elif kind == "dnc":
            d = await store.get_dnc(ident)
            found = [d] if d else []
        else:
            trunks, enterprises, filings, _ = await store.load_refdata()
            pools: dict[str, list[Any]] = {"trunks": trunks, "enterprises": enterprises, "filings": filings}
            pool = pools[kind]
            if ident:
                from policy.loader import NUMBER_FIELDS
                from policy.model import KIND_KEYS
                from policy.numbers import normalize_number

                want = ident
                if kind in NUMBER_FIELDS:
                    want = normalize_number(ident, _region(args)) or ident
                pool = [r for r in pool if getattr(r, KIND_KEYS[kind]) == want]
            found = sorted(pool, key=lambda r: str(getattr(r, _key(kind))))
        for rec in found:
            print(_dump(rec))
        if ident and not found:
            _err(args, f"no {kind} record {ident!r}")
            return EXIT_FAIL
        return EXIT_OK

    return _run(args, body)


def _key(kind: str) -> str:
    from policy.model import KIND_KEYS

    return KIND_KEYS[kind]


# ---------------------------------------------------------------- consent / dnc


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
            _, enterprises, _, _ = await store.load_refdata()
            current = next((e for e in enterprises if e.enterprise_id == args.id), None)
            if current is not None and current.status == "blacklisted":
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

        engine = AdmissionEngine(store, config)
        await engine.start()
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


# ---------------------------------------------------------------- registration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy`` and ``explain`` to the ``cag`` parser (called by gateway.cli)."""
    policy = sub.add_parser("policy", help="load and change policy data", description="Manage policy data in Redis.")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    p = psub.add_parser(
        "load",
        help="load trunks, enterprises, filings, consents or dnc from CSV/JSONL",
        description="Load a CSV or JSONL file (by extension). All-or-nothing per file: bad rows are "
        "reported as FILE:LINE: reason and nothing is written. Upsert by key; --replace makes "
        "the file the whole set of that kind.",
    )
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=" / ".join(KINDS))
    p.add_argument("file", metavar="FILE", help=".csv, .jsonl or .ndjson")
    p.add_argument("--replace", action="store_true", help="records absent from the file are removed")
    p.add_argument("--region", default=None, help="default region for numbers (default $CAG_REGION or CN)")
    _redis_options(p)
    p.set_defaults(func=_command("policy load", _cmd_load))

    p = psub.add_parser("show", help="print stored records as JSONL")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=" / ".join(KINDS))
    p.add_argument("id", nargs="?", metavar="ID", help="one record (required for consents and dnc)")
    p.add_argument("--region", default=None, help=argparse.SUPPRESS)
    _redis_options(p)
    p.set_defaults(func=_command("policy show", _cmd_show))

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
    from provisioning.cli import register_complaint  # cag policy complaint add (R12)

    register_complaint(psub)

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
