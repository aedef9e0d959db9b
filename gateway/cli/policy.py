"""``cag policy …`` and ``cag explain``: the operator's data tools (SPEC §8, §9).

The names, flags and exit codes here are a contract other tools script
against, so they follow SPEC §9 exactly. Every command that talks to Redis
takes ``--redis-url``/``--state-dir`` on its own (leaf) parser, so the
options work after the positional arguments too, and loads the Redis
Function library itself: data can be provisioned before ``serve`` ever ran.

Exit codes: 0 done (``explain``: admitted), 1 refused or failed (bad rows,
unknown id or token; ``explain``: rejected), 2 usage error (argparse's
own code; also bad option values such as an unparseable ``--at``), 3
Redis unavailable (``explain`` could not decide; a load wrote nothing
visible), so a script never takes an outage for a rejection or for bad
data, 4 a load lost a race with another load of the same kind (run it again).
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
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policy.loader import LoadError, RowError, validate_row
from policy.model import KIND_MODELS, Consent, DncEntry, Record

if TYPE_CHECKING:
    from gateway.config import Settings
    from policy.store import PolicyStore

__all__ = ["register"]

log = logging.getLogger(__name__)

KINDS = tuple(KIND_MODELS)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_CONFLICT = 0, 1, 2, 3, 4


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


def _tz(args: argparse.Namespace) -> tzinfo | None:
    """Zone for times written without an offset: --tz, else the deployment's default_tz."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = getattr(args, "tz", None)
    if not name:
        name = _settings(args).default_tz if getattr(args, "config", None) else (
            os.environ.get("CAG_DEFAULT_TZ") or "Asia/Shanghai"
        )
    if name.lower() in ("none", "require"):
        return None
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _UsageError(f"--tz: unknown time zone {name!r} (e.g. Asia/Shanghai, UTC, or none to refuse)") from None


class _Progress:
    """``rows, rows/s, %, ETA`` on one self-rewriting stderr line, only when stderr is a terminal."""

    def __init__(self, total_bytes: int, enabled: bool | None = None) -> None:
        self.total = total_bytes
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, rows: int, consumed: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-6)
        rate = rows / elapsed
        line = f"  {rows:,} rows  {rate:,.0f} rows/s"
        if self.total and consumed:
            frac = min(consumed / self.total, 1.0)
            eta = elapsed * (1 - frac) / max(frac, 1e-6)
            line += f"  {frac:.0%}  ETA {int(eta // 60)}:{int(eta % 60):02d}"
        sys.stderr.write("\r" + line.ljust(60))
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False


def _cmd_load(args: argparse.Namespace) -> int:
    """Stream the file once: validate every row and write it into a new generation (or staging) as it goes.

    Nothing is visible until the whole file proved good: then one switch
    (consents, DNC) or one MULTI (reference kinds) makes all of it live.
    """
    from policy.loader import FileStream

    path = Path(args.file)
    if args.nice:
        # On the gateway's own box the loader must lose every fight for a CPU against Redis
        # and the workers: a load may take longer, a call may not (issue 14).
        try:
            os.nice(args.nice)
        except OSError:
            pass
    stream = FileStream(args.kind, path, region=_region(args), tz=_tz(args), encoding=args.encoding)
    if stream.note:
        print(f"cag policy load: {stream.note}", file=sys.stderr)
    if stream.errors.count:  # the file cannot be read at all: no need for Redis
        return _report(stream.errors.shown, stream.errors)
    progress = _Progress(stream.size)
    outcome: dict[str, Any] = {}

    async def body(store: PolicyStore) -> int:
        if args.kind in ("dnc", "consents"):
            return await _load_layered(args, store, stream, progress, outcome)
        return await _load_ref(args, store, stream, progress, outcome)

    rc = _run(args, body, unavailable=EXIT_UNAVAILABLE)
    progress.done()
    if outcome.get("errors"):
        for line in outcome["errors"]:
            print(line, file=sys.stderr)
    if rc == EXIT_OK:
        n = outcome.get("rows", 0)
        if not n:
            what = "every" if args.replace else "nothing"
            print(f"cag policy load: {path} has no data rows: {what} {args.kind} record{' was removed' if args.replace else ' to load'}", file=sys.stderr)
        print(f"loaded {n} {args.kind} from {path}{' (replace)' if args.replace else ''}")
        if outcome.get("gc"):
            return _gc_after(args, outcome["gc"])
    return rc


def _report(shown: list[str], errors: Any) -> int:
    try:
        errors.raise_if_any()
    except LoadError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
    return EXIT_FAIL


def _empty_refusal(args: argparse.Namespace, path: Path) -> str:
    return (
        f"cag policy load: {path} has no data rows: refusing to --replace every {args.kind} record "
        "with nothing (pass --allow-empty to really empty it)"
    )


async def _load_layered(
    args: argparse.Namespace, store: PolicyStore, stream: Any, progress: _Progress, outcome: dict[str, Any]
) -> int:
    from policy.bulk import BATCH_ROWS, LayerWriter, SwitchConflict
    from policy.loader import duplicate_lines

    writer = LayerWriter(store, args.kind, replace=args.replace)
    await writer.begin()
    try:
        batch: list[Any] = []
        for _, row in stream:
            if stream.errors.count:
                continue  # the file is bad: keep validating to name every bad row, write nothing more
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                await writer.add(batch)
                batch = []
                progress.update(stream.rows, stream.consumed)
                await _pace(args, stream.rows, progress.t0)
        if not stream.errors.count:
            await writer.add(batch)
            await writer.finish()
        progress.update(stream.rows, stream.consumed, force=True)
        progress.done()
        if stream.errors.count or writer.suspects:
            await writer.abort()
            lines = _error_lines(stream.errors)
            if writer.suspects and not stream.errors.count:
                lines = duplicate_lines(stream, writer.suspects) or [
                    f"{stream.path}:1: duplicate {args.kind} keys (could not locate them again: was the file changed?)"
                ]
            outcome["errors"] = lines
            return EXIT_FAIL
        if not stream.rows and args.replace and not args.allow_empty:
            await writer.abort()
            outcome["errors"] = [_empty_refusal(args, stream.path)]
            return EXIT_FAIL
        try:
            await writer.commit(grace_s=args.gc_grace)
        except SwitchConflict as e:
            outcome["errors"] = [f"cag policy load: {e}"]
            return EXIT_CONFLICT
    except BaseException:
        await writer.abort()
        raise
    outcome["rows"] = stream.rows
    outcome["gc"] = bool(writer.retire)
    return EXIT_OK


async def _load_ref(
    args: argparse.Namespace, store: PolicyStore, stream: Any, progress: _Progress, outcome: dict[str, Any]
) -> int:
    from policy.store import RefWriter

    writer = RefWriter(store, args.kind, replace=args.replace)
    await writer.begin()
    batch: list[Any] = []
    for _, rec in stream:
        if stream.errors.count:
            continue
        batch.append(rec)
        if len(batch) >= 1000:
            await writer.add(batch)
            batch = []
            progress.update(stream.rows, stream.consumed)
    progress.done()
    if stream.errors.count:
        await store._call("UNLINK", writer.staging)
        outcome["errors"] = _error_lines(stream.errors)
        return EXIT_FAIL
    if not stream.rows and args.replace and not args.allow_empty:
        outcome["errors"] = [_empty_refusal(args, stream.path)]
        return EXIT_FAIL
    await writer.add(batch)
    await writer.commit()
    outcome["rows"] = stream.rows
    return EXIT_OK


async def _pace(args: argparse.Namespace, rows: int, t0: float) -> None:
    """--max-rate: stay at or below N rows/s (a load beside a busy gateway on a small box)."""
    rate = getattr(args, "max_rate", None)
    if rate:
        ahead = rows / rate - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)


def _error_lines(errors: Any) -> list[str]:
    try:
        errors.raise_if_any()
    except LoadError as e:
        return list(e.errors)
    return []


def _gc_after(args: argparse.Namespace, _: Any) -> int:
    """Delete the replaced generation once workers have moved off it (in bounded UNLINK steps)."""
    if args.gc_grace < 0:
        print("cag policy load: the replaced generation is left for `cag policy gc`", file=sys.stderr)
        return EXIT_OK

    async def body(store: PolicyStore) -> int:
        from policy.bulk import collect_garbage

        await asyncio.sleep(args.gc_grace)
        await collect_garbage(store)
        return EXIT_OK

    rc = _run(args, body, unavailable=EXIT_UNAVAILABLE)
    if rc != EXIT_OK:
        print("cag policy load: the data is loaded; deleting the replaced generation failed, "
              "`cag policy gc` will retry", file=sys.stderr)
        return EXIT_OK
    return rc


def _cmd_gc(args: argparse.Namespace) -> int:
    """Delete retired or abandoned consent/DNC generations that are due."""

    async def body(store: PolicyStore) -> int:
        from policy.bulk import collect_garbage

        n = await collect_garbage(store, now=time.time() + (args.now_plus or 0))
        print(f"deleted {n} buckets of retired generations")
        return EXIT_OK

    return _run(args, body, unavailable=EXIT_UNAVAILABLE)


def _dump(rec: Record) -> str:
    return json.dumps(rec.model_dump(mode="json", exclude_none=True), ensure_ascii=False)


def _cmd_show(args: argparse.Namespace) -> int:
    """Print stored records as JSONL (the loader reads this back)."""
    kind, ident = args.kind, args.id
    callee = getattr(args, "callee", None)
    if kind in ("consents", "dnc") and not ident and not (kind == "consents" and callee):
        raise _UsageError(
            f"{kind}: give the {'token (or --callee NUMBER)' if kind == 'consents' else 'number'} to show"
        )

    async def body(store: PolicyStore) -> int:
        found: list[Record] = []
        if kind == "consents" and callee:
            found = list(await store.consents_for(callee))
        elif kind == "consents":
            c = await store.get_consent(ident)
            found = [c] if c else []
        elif kind == "dnc":
            d = await store.get_dnc(ident)
            found = [d] if d else []
        elif ident:
            # One record: one HGET, however big the kind (not a read of every filing).
            from policy.loader import NUMBER_FIELDS
            from policy.numbers import normalize_number

            want = ident
            if kind in NUMBER_FIELDS:
                want = normalize_number(ident, _region(args)) or ident
            rec = await store.get_ref(kind, want)
            found = [rec] if rec else []
        else:
            found = sorted([r async for r in store.scan_ref(kind)], key=lambda r: str(getattr(r, _key(kind))))
        for rec in found:
            print(_dump(rec))
        if (ident or callee) and not found:
            _err(args, f"no {kind} record {ident or callee!r}")
            return EXIT_FAIL
        return EXIT_OK

    return _run(args, body)


def _cmd_export(args: argparse.Namespace) -> int:
    """Every live record of a kind as JSONL on stdout (``policy load`` reads it back), in bounded reads."""

    async def body(store: PolicyStore) -> int:
        n = 0
        if args.kind in ("dnc", "consents"):
            async for rec in store.export_layered(args.kind):
                print(_dump(rec))
                n += 1
        else:
            async for rec in store.scan_ref(args.kind):
                print(_dump(rec))
                n += 1
        print(f"cag policy export: {n} {args.kind}", file=sys.stderr)
        return EXIT_OK

    return _run(args, body, unavailable=EXIT_UNAVAILABLE)


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
        "the file the whole set of that kind. Exit 0 loaded, 1 bad data (nothing loaded), "
        "2 usage, 3 Redis unavailable, 4 another load switched the same kind meanwhile. "
        "See docs/reference-data.md.",
    )
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=" / ".join(KINDS))
    p.add_argument("file", metavar="FILE", help=".csv, .jsonl or .ndjson")
    p.add_argument("--replace", action="store_true", help="records absent from the file are removed")
    p.add_argument(
        "--allow-empty",
        dest="allow_empty",
        action="store_true",
        help="with --replace, accept a file with no data rows (it empties the kind)",
    )
    p.add_argument("--region", default=None, help="default region for numbers (default $CAG_REGION or CN)")
    p.add_argument(
        "--encoding",
        default=None,
        help="file encoding, e.g. utf-8, gb18030, utf-16 (default: detected from a BOM, else UTF-8, else GB18030)",
    )
    p.add_argument(
        "--tz",
        default=None,
        help="zone of times written without an offset (default the deployment's default_tz, "
        "$CAG_DEFAULT_TZ or Asia/Shanghai; 'none' refuses such times)",
    )
    p.add_argument(
        "--gc-grace",
        dest="gc_grace",
        type=float,
        default=5.0,
        help="seconds the replaced consent/DNC generation stays readable before it is deleted "
        "(default 5; negative: leave it to `cag policy gc`)",
    )
    p.add_argument(
        "--max-rate",
        dest="max_rate",
        type=float,
        default=None,
        help="rows per second at most (default: as fast as Redis takes them)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=10,
        help="lower the loader's CPU priority by this much (default 10: Redis and the gateway "
        "come first on a shared box; 0 keeps it)",
    )
    _redis_options(p)
    p.set_defaults(func=_command("policy load", _cmd_load))

    p = psub.add_parser("gc", help="delete retired or abandoned consent/DNC generations that are due")
    p.add_argument("--now-plus", dest="now_plus", type=float, default=0.0, help=argparse.SUPPRESS)
    _redis_options(p)
    p.set_defaults(func=_command("policy gc", _cmd_gc))

    p = psub.add_parser("show", help="print stored records as JSONL")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=" / ".join(KINDS))
    p.add_argument("id", nargs="?", metavar="ID", help="one record (required for consents and dnc)")
    p.add_argument("--callee", default=None, help="consents: every consent of this callee")
    p.add_argument("--region", default=None, help=argparse.SUPPRESS)
    _redis_options(p)
    p.set_defaults(func=_command("policy show", _cmd_show))

    p = psub.add_parser("export", help="print every record of a kind as JSONL (bounded reads; reloadable)")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=" / ".join(KINDS))
    _redis_options(p)
    p.set_defaults(func=_command("policy export", _cmd_export))

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
