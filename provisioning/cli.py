"""``cag api …`` and ``cag policy complaint add`` (SPEC §10).

``register(sub)`` adds ``api`` to the ``cag`` parser; ``register_complaint``
adds ``complaint`` under ``cag policy``. Exit codes as ``cag policy``: 0
done, 1 refused or failed (unknown key, Redis unreachable), 2 usage error.
The key is printed once, alone on stdout (scripts capture it), and never
stored: only its hash is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("cag.api")

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_RATE = 100.0
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Usage(Exception):
    pass


def _settings(args: argparse.Namespace) -> Any:
    from gateway.config import load_settings
    from provisioning.service import SETTINGS_ENV

    overrides = {"redis_url": getattr(args, "redis_url", None), "state_dir": getattr(args, "state_dir", None)}
    inherited = os.environ.get(SETTINGS_ENV)  # started by `cag serve --api`: the parent's settings
    if inherited:
        overrides = {**json.loads(inherited), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return load_settings(getattr(args, "config", None), **overrides)
    except Exception as e:  # ValidationError, TOML syntax, missing file
        raise _Usage(f"bad configuration: {e}") from e


def _redis_url(settings: Any) -> str:
    from gateway.config import resolve_redis_url

    return resolve_redis_url(settings.redis_url, settings.state_dir)


def _audit_roots(args: argparse.Namespace, settings: Any) -> list[Path]:
    d = getattr(args, "audit_dir", None) or settings.audit_dir or Path(settings.state_dir) / "audit"
    return [Path(d)]


def _options(p: argparse.ArgumentParser, *, leaf: bool) -> None:
    """Redis and configuration options; on leaf parsers they must not reset the parent's values."""
    default = argparse.SUPPRESS if leaf else None
    p.add_argument("--redis-url", dest="redis_url", default=default,
                   help="Redis URL; default $CAG_REDIS_URL, else the embedded server under --state-dir")
    p.add_argument("--state-dir", dest="state_dir", default=default, help="state directory (default .state)")
    p.add_argument("--config", default=default, help="gateway TOML file (its redis_url, region, thresholds…)")


def _run(args: argparse.Namespace, name: str, body: Callable[[Any, Any], Awaitable[int]]) -> int:
    """Settings, store, body(settings, store); one stderr line and an exit code for any failure."""
    from policy.store import PolicyStore, StoreError

    async def main() -> int:
        settings = _settings(args)
        store = await PolicyStore.connect(_redis_url(settings))
        try:
            await store.ensure_functions()
            return await body(settings, store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except _Usage as e:
        print(f"cag {name}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, RuntimeError, OSError) as e:  # RuntimeError: the embedded server did not start
        print(f"cag {name}: {e}", file=sys.stderr)
        return EXIT_FAIL


# ---------------------------------------------------------------- cag api (serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.config import split_host_port
    from provisioning.app import ApiState, create_app

    listen = args.listen or os.environ.get("CAG_API") or DEFAULT_LISTEN
    try:
        host, port = split_host_port(listen, listen)
        settings = _settings(args)
    except (ValueError, _Usage) as e:
        print(f"cag api: {e}", file=sys.stderr)
        return EXIT_USAGE
    level = (args.log_level or settings.log_level).upper()
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        url = _redis_url(settings)
    except Exception as e:  # the embedded server could not start
        print(f"cag api: {e}", file=sys.stderr)
        return EXIT_FAIL
    state = ApiState(settings, url, _audit_roots(args, settings))
    config = uvicorn.Config(
        create_app(state), host=host, port=port, loop="uvloop", http="httptools", access_log=False,
        log_level=level.lower(), lifespan="on", server_header=False,
    )
    server = uvicorn.Server(config)
    log.info("provisioning API on http://%s:%d (OpenAPI at /v1/openapi.json)", host, port)
    server.run()
    return EXIT_OK if server.started else EXIT_FAIL


# ---------------------------------------------------------------- keys


def _cmd_key_create(args: argparse.Namespace) -> int:
    if args.rate <= 0:
        print("cag api key create: --rate must be positive", file=sys.stderr)
        return EXIT_USAGE

    async def body(settings: Any, store: Any) -> int:
        from provisioning.changes import ChangeLog
        from provisioning.store import ApiStore

        if args.enterprise and await store.get_ref("enterprises", args.enterprise) is None:
            print(f"cag api key create: warning: enterprise {args.enterprise!r} is not provisioned (yet)",
                  file=sys.stderr)
        key, text = await ApiStore(store.client).create_key(
            enterprise_id=args.enterprise, admin=args.admin, rate=args.rate, name=args.name or "",
            now=datetime.now(UTC),
        )
        await ChangeLog(store.client).record("cli", "key_create", enterprise_id=key.enterprise_id)
        print(text)
        who = "admin" if key.admin else f"enterprise {key.enterprise_id}"
        print(f"created key {key.key_id} ({who}, {key.rate:g} requests/s); it is shown only this once",
              file=sys.stderr)
        return EXIT_OK

    return _run(args, "api key create", body)


def _cmd_key_revoke(args: argparse.Namespace) -> int:
    from provisioning.store import split_key

    parts = split_key(args.key_id)
    key_id = parts[0] if parts else args.key_id

    async def body(settings: Any, store: Any) -> int:
        from provisioning.changes import ChangeLog
        from provisioning.store import ApiStore

        if not await ApiStore(store.client).revoke_key(key_id, datetime.now(UTC)):
            print(f"cag api key revoke: unknown key {key_id!r}", file=sys.stderr)
            return EXIT_FAIL
        await ChangeLog(store.client).record("cli", "key_revoke", evidence_ref=key_id)
        print(f"revoked key {key_id} (refused within 1 s by running API processes)")
        return EXIT_OK

    return _run(args, "api key revoke", body)


def _cmd_key_list(args: argparse.Namespace) -> int:
    async def body(settings: Any, store: Any) -> int:
        from provisioning.store import ApiStore

        for key in await ApiStore(store.client).list_keys():
            print(json.dumps(key.to_json()))
        return EXIT_OK

    return _run(args, "api key list", body)


# ---------------------------------------------------------------- complaint add


def _cmd_complaint_add(args: argparse.Namespace) -> int:
    from policy.numbers import normalize_number

    try:
        reported_at = datetime.fromisoformat(args.reported_at.strip())
    except ValueError:
        print(f"cag policy complaint add: --reported-at: not an ISO 8601 time: {args.reported_at!r}",
              file=sys.stderr)
        return EXIT_USAGE
    if reported_at.tzinfo is None:
        reported_at = reported_at.replace(tzinfo=UTC)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def body(settings: Any, store: Any) -> int:
        import redis

        from provisioning.changes import ChangeLog
        from provisioning.complaints import file_complaint
        from provisioning.store import ApiStore
        from provisioning.trace import calls_before

        region = args.region or settings.region
        for opt, value in (("--callee", args.callee), ("--caller", args.caller)):
            if normalize_number(value, region) is None:
                raise _Usage(f"{opt}: not a phone number: {value!r}")
        roots = _audit_roots(args, settings)
        url = _redis_url(settings)
        if store.cluster:
            from redis.cluster import RedisCluster

            sync: Any = RedisCluster.from_url(url)
        else:
            sync = redis.Redis.from_url(url)

        async def trace(callers: frozenset[str], callees: frozenset[str], at: datetime) -> list[Any]:
            return await asyncio.to_thread(calls_before, roots, sync, callers=callers, callees=callees,
                                           reported_at=at)

        try:
            out = await file_complaint(
                store, ApiStore(store.client), ChangeLog(store.client), trace, callee=args.callee,
                caller=args.caller, reported_at=reported_at, channel=args.channel, ref=args.ref,
                actor="cli", region=region, default_threshold=settings.complaint_threshold,
            )
        finally:
            sync.close()
        print(json.dumps(out, ensure_ascii=False))
        return EXIT_OK

    return _run(args, "policy complaint add", body)


# ---------------------------------------------------------------- registration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cag api`` (serve) and ``cag api key create/revoke/list``."""
    api = sub.add_parser(
        "api", help="the provisioning API (HTTP) and its keys",
        description="Serve the provisioning API (SPEC §10): consents, DNC, complaints, explain over HTTP. "
        "OpenAPI at /v1/openapi.json.",
    )
    api.add_argument("--listen", default=None, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    _options(api, leaf=False)
    api.add_argument("--audit-dir", dest="audit_dir", default=None,
                     help="audit archive directory for complaint traces (default the config's, else STATE_DIR/audit)")
    api.add_argument("--log-level", dest="log_level", default=None, help="debug, info, warning, error")
    api.set_defaults(func=_cmd_serve)
    asub = api.add_subparsers(dest="api_command", required=False, metavar="COMMAND")
    key = asub.add_parser("key", help="create, revoke or list API keys")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")

    p = ksub.add_parser("create", help="create a key (printed once on stdout; only its hash is stored)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--enterprise", default=None, metavar="ID", help="a key confined to this enterprise")
    who.add_argument("--admin", action="store_true", help="a key that may do everything")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help=f"requests per second (default {DEFAULT_RATE:g})")
    p.add_argument("--name", default=None, help="a label (who holds the key)")
    _options(p, leaf=True)
    p.set_defaults(func=_cmd_key_create)

    p = ksub.add_parser("revoke", help="revoke a key (its requests get 401 within 1 s)")
    p.add_argument("key_id", metavar="KEY_ID", help="the key id (or the whole key)")
    _options(p, leaf=True)
    p.set_defaults(func=_cmd_key_revoke)

    p = ksub.add_parser("list", help="list keys as JSONL (never the keys themselves)")
    _options(p, leaf=True)
    p.set_defaults(func=_cmd_key_list)


def register_complaint(policy_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cag policy complaint add`` (the complaint desk's intake, same as POST /v1/complaints)."""
    complaint = policy_sub.add_parser("complaint", help="file a harassment complaint (R12)")
    csub = complaint.add_subparsers(dest="complaint_command", required=True, metavar="COMMAND")
    p = csub.add_parser(
        "add", help="trace a complaint, withdraw the consent, count it, suspend over the threshold",
        description="Prints the complaint as JSON: traced records, responsible enterprise, actions taken.",
    )
    p.add_argument("--callee", required=True, help="the number that received the call")
    p.add_argument("--caller", required=True, help="the number that called")
    p.add_argument("--reported-at", dest="reported_at", required=True, help="ISO 8601 (no offset = UTC)")
    p.add_argument("--channel", required=True, help="12321, carrier, or another source")
    p.add_argument("--ref", required=True, help="the channel's reference for the report")
    p.add_argument("--region", default=None, help=argparse.SUPPRESS)
    p.add_argument("--audit-dir", dest="audit_dir", default=None, help="audit archive directory")
    _options(p, leaf=False)
    p.set_defaults(func=_cmd_complaint_add)
