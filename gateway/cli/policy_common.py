"""What every ``cag policy`` command and ``cag explain`` share: options, settings, running against the store.

The exit codes are told in ``gateway/cli/policy.py``'s docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

from policy.model import KIND_MODELS

if TYPE_CHECKING:
    from gateway.config import Settings
    from policy.store import PolicyStore

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
