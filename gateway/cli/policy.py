"""``cag policy …`` and ``cag explain``: the operator's data tools (SPEC §8, §9).

This module registers them and runs ``load``, ``gc``, ``show`` and
``export``; the one-off changes are in ``gateway/cli/changes.py``,
``explain`` in ``gateway/cli/explain.py``, what they share in
``gateway/cli/policy_common.py``.

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
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.policy_common import (
    EXIT_CONFLICT,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    KINDS,
    _command,
    _err,
    _Progress,
    _redis_options,
    _region,
    _run,
    _tz,
    _UsageError,
)
from policy.loader import LoadError
from policy.model import Record

if TYPE_CHECKING:
    from policy.store import PolicyStore

__all__ = ["register"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- policy load / show


def _cmd_load(args: argparse.Namespace) -> int:
    """Stream the file once: validate every row and write it into a new generation (or staging) as it goes.

    Nothing is visible until the whole file proved good: then one switch
    (consents, DNC) or one MULTI (reference kinds) makes all of it live.
    """
    from policy.loader import FileStream

    path = Path(args.file)
    if args.nice:
        # On the gateway's own box the loader must lose every fight for a CPU against Redis
        # and the workers: a load may take longer, a call may not (issue 14). SCHED_IDLE was
        # measured and not kept: Redis then waited behind the loader longer, not shorter
        # (docs/reference-data.md, "What sets the longest stall").
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

    from gateway.cli.changes import register as register_changes  # consent / dnc / suspend / resume

    register_changes(psub)
    from provisioning.cli import register_complaint  # cag policy complaint add (R12)

    register_complaint(psub)

    from gateway.cli.explain import register as register_explain

    register_explain(sub)
