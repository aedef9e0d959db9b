"""``cag audit archive``, ``export``, ``query`` and ``convert`` (SPEC §9, docs/audit.md).

Exit codes: 0 done; 1 done but incomplete or failed (a damaged segment was
skipped, the live stream could not be read, Redis unreachable for the
archiver at start, a query DuckDB refused); 2 usage error (bad time,
retention under 30 days, a statement that is not a query).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Usage(Exception):
    pass


def _settings(args: argparse.Namespace) -> Any:
    if not getattr(args, "config", None):
        return None
    from gateway.config import load_settings

    try:
        return load_settings(args.config)
    except Exception as e:
        raise _Usage(f"bad configuration: {e}") from e


def _state_dir(args: argparse.Namespace) -> Path:
    s = _settings(args)
    d = args.state_dir or (s.state_dir if s is not None else None) or os.environ.get("CAG_STATE_DIR") or ".state"
    return Path(d).resolve()


def _archive_dirs(args: argparse.Namespace) -> list[Path]:
    given = args.archive_dir or ([os.environ["CAG_AUDIT_DIR"]] if os.environ.get("CAG_AUDIT_DIR") else [])
    return [Path(d).resolve() for d in given] or [_state_dir(args) / "audit"]


def _redis_url(args: argparse.Namespace) -> str:
    from gateway.config import resolve_redis_url

    s = _settings(args)
    url = args.redis_url or (s.redis_url if s is not None else None)
    return resolve_redis_url(url, _state_dir(args))


def _client(url: str) -> Any:
    import redis

    from policy.redis_client import is_sentinel, sync_client

    if is_sentinel(url):
        return sync_client(url, socket_timeout=5.0, socket_connect_timeout=2.0)
    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)
    info = client.info("cluster")
    if int(info.get("cluster_enabled", 0)) == 1:
        from redis.cluster import RedisCluster

        client.close()
        return RedisCluster.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)
    return client


def parse_time(text: str, option: str) -> int:
    """ISO 8601 (a time without offset is UTC) → µs since the epoch."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _Usage(f"{option}: not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


def _numbers(raw: str | None) -> frozenset[str]:
    """A number as typed and as the gateway normalises it, so either spelling matches."""
    if not raw:
        return frozenset()
    from policy.numbers import normalize_number

    region = os.environ.get("CAG_REGION") or "CN"
    norm = normalize_number(raw, region)
    return frozenset(x for x in (raw, norm) if x)


def _cmd_export(args: argparse.Namespace) -> int:
    from gateway.audit.export import Query, export

    q = Query(
        since_us=parse_time(args.since, "--since") if args.since else None,
        until_us=parse_time(args.until, "--until") if args.until else None,
        caller=_numbers(args.caller),
        callee=_numbers(args.callee),
        call_id=args.call_id,
    )
    root = _archive_dirs(args)
    problems: list[str] = []

    def report(path: Path, msg: str) -> None:
        problems.append(str(path))
        print(f"cag audit export: skipped damaged segment {path}: {msg}", file=sys.stderr)

    client = _live_client(args, "export", problems)
    try:
        n = export(root, q, sys.stdout, args.format, client=client, on_error=report)
    except BrokenPipeError:
        return EXIT_OK
    finally:
        if client is not None:
            client.close()
    sys.stdout.flush()
    logging.getLogger("cag.audit").info("exported %d records", n)
    return EXIT_FAIL if problems else EXIT_OK


def _live_client(args: argparse.Namespace, prog: str, problems: list[str]) -> Any:
    if args.archive_only:
        return None
    try:
        client = _client(_redis_url(args))
        client.ping()
        return client
    except Exception as e:
        print(f"cag audit {prog}: live stream not read (Redis: {e}); archived records only", file=sys.stderr)
        problems.append("stream")
        return None


def _cmd_query(args: argparse.Namespace) -> int:
    """SQL over the view ``audit`` (one row per record): SELECT only, nothing written anywhere."""
    import duckdb

    from gateway.audit import segments
    from gateway.audit.engine import AUDIT_VIEW_COLUMNS, Engine, lit
    from gateway.audit.export import read_stream

    if args.columns:
        for name, typ, note in AUDIT_VIEW_COLUMNS:
            print(f"{name}\t{typ}\t{note}")
        return EXIT_OK
    if not args.sql:
        raise _Usage("give a query (SELECT ... FROM audit ...), or --columns")
    try:
        statements = duckdb.connect().extract_statements(args.sql)
    except duckdb.Error as e:
        raise _Usage(f"not SQL DuckDB reads: {e}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise _Usage("one SELECT statement only (the archive is read-only here)")
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    roots = _archive_dirs(args)
    problems: list[str] = []

    def report(path: Path, msg: str) -> None:
        problems.append(str(path))
        print(f"cag audit query: skipped damaged segment {path}: {msg}", file=sys.stderr)

    client = _live_client(args, "query", problems)
    files = segments.files_in(roots, since, until)
    tmp = tempfile.TemporaryDirectory(prefix="cag-audit-")
    ndjson = []
    if client is not None:
        if segments.write_ndjson(Path(tmp.name) / "live.jsonl", read_stream(client)):
            ndjson.append(Path(tmp.name) / "live.jsonl")
        client.close()
    for i, p in enumerate(files.legacy):
        if segments.write_ndjson(Path(tmp.name) / f"legacy-{i}.jsonl", segments.read_segment(p, report)):
            ndjson.append(Path(tmp.name) / f"legacy-{i}.jsonl")
    records = segments.check_files(files.records, report)
    entries = segments.check_files(files.entries, report)
    eng = Engine(records, entries, ndjson=ndjson)
    try:
        # from here on the statement can read nothing but the archive and write nothing
        dirs = sorted({str(r) for r in roots} | {tmp.name})
        eng.con.execute(f"SET allowed_directories = [{', '.join(lit(d) for d in dirs)}]")
        eng.con.execute("SET enable_external_access = false")
        eng.con.execute("SET lock_configuration = true")
        bounds = [f"time_us >= {since}" if since is not None else "", f"time_us < {until}" if until is not None else ""]
        if any(bounds):
            eng.con.execute(f"CREATE OR REPLACE VIEW audit AS SELECT * FROM audit_all WHERE "
                            f"{' AND '.join(b for b in bounds if b)}")
        cur = eng.con.execute(args.sql)
        names = [d[0] for d in cur.description or []]
        out = sys.stdout
        if args.format == "csv":
            import csv

            csv.writer(out, lineterminator="\n").writerow(names)
        while rows := cur.fetchmany(65_536):
            if args.format == "jsonl":
                import json

                for r in rows:
                    out.write(json.dumps(dict(zip(names, r, strict=True)), ensure_ascii=False,
                                         separators=(",", ":"), default=str) + "\n")
            else:
                csv.writer(out, lineterminator="\n").writerows(rows)
    except duckdb.Error as e:
        print(f"cag audit query: {e}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_OK
    finally:
        eng.close()
        tmp.cleanup()
    sys.stdout.flush()
    return EXIT_FAIL if problems else EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    """Compact partitions that still hold gzip'd JSON-lines segments (``--all``: every partition
    with more than one file, or a records file of the text layout) into packed records files."""
    from gateway.audit import segments

    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    problems: list[str] = []

    def report(path: Path, msg: str) -> None:
        problems.append(str(path))
        print(f"cag audit convert: damaged segment {path}: {msg}", file=sys.stderr)

    done = 0
    for root in _archive_dirs(args):
        for _, part in segments.partitions(root, since, until):
            files = segments.Files().add(segments.segments(part))
            # text columns (before 2026-12-07) or an older packed layout: repacked to the newest
            unpacked = any(segments.layout(r) < segments.NEWEST_LAYOUT for r in files.records)
            if files.legacy or (args.all and (len(files) > 1 or unpacked)):
                if segments.compact(part, report, min_segments=1) is not None:
                    done += 1
                else:
                    problems.append(str(part))
    print(f"converted {done} partitions", file=sys.stderr)
    return EXIT_FAIL if problems else EXIT_OK


def _cmd_archive(args: argparse.Namespace) -> int:
    from gateway.audit import archiver, segments

    try:
        segments.check_retention(args.retention_days)
    except ValueError as e:
        raise _Usage(str(e)) from e
    dirs = _archive_dirs(args)
    if len(dirs) > 1:
        raise _Usage("one --archive-dir for the archiver")
    root = dirs[0]
    root.mkdir(parents=True, exist_ok=True)
    if not logging.getLogger().handlers:
        from gateway.supervisor import setup_logging

        setup_logging(args.log_level)
    try:
        client = _client(_redis_url(args))
    except Exception as e:
        print(f"cag audit archive: cannot reach Redis: {e}", file=sys.stderr)
        return EXIT_FAIL
    kwargs: dict[str, Any] = {
        "name": args.name or archiver.default_name(),
        "group": args.group,
        "retention_days": args.retention_days,
        "batch": args.batch,
    }
    if args.once:
        arch = archiver.Archiver(client, root, block_ms=1, **kwargs)
        arch.ensure_group()
        arch.drain()
        arch.maintain()
        print(f"archived {arch.archived} entries", file=sys.stderr)
        return EXIT_FAIL if arch.errors else EXIT_OK
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return archiver.run(client, root, stop=lambda: stopping, **kwargs)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", dest="redis_url", default=None,
                   help="Redis URL; default $CAG_REDIS_URL, else the embedded server")
    p.add_argument("--state-dir", dest="state_dir", default=None,
                   help="state directory (default $CAG_STATE_DIR or .state)")
    p.add_argument("--config", default=None, help="gateway TOML file (its redis_url, state_dir)")
    p.add_argument("--archive-dir", dest="archive_dir", action="append", default=None,
                   help="archive directory (default $CAG_AUDIT_DIR, else STATE_DIR/audit); "
                        "export, query, convert: repeatable, to read the archives of several hosts as one")


def _wrap(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
            return result
        except _Usage as e:
            print(f"cag audit {args.audit_cmd}: {e}", file=sys.stderr)
            return EXIT_USAGE

    return run


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="audit trail: archive, export, query", description="The audit trail (SPEC §7).")
    asub = p.add_subparsers(dest="audit_cmd", required=True)

    e = asub.add_parser("export", help="audit records in time order (no range: all)")
    e.add_argument("--since", help="ISO 8601, inclusive (no offset: UTC)")
    e.add_argument("--until", help="ISO 8601, exclusive (no offset: UTC)")
    e.add_argument("--caller", help="calling number (as sent or normalised)")
    e.add_argument("--callee", help="called number (as sent or normalised)")
    e.add_argument("--call-id", dest="call_id", help="SIP Call-ID")
    e.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    e.add_argument("--archive-only", dest="archive_only", action="store_true",
                   help="do not read the not-yet-archived stream")
    _common(e)
    e.set_defaults(func=_wrap(_cmd_export))

    qp = asub.add_parser("query", help="SQL over the view `audit` (one row per record; read-only)",
                         description="Run one SELECT over the view `audit` (columns: --columns; docs/audit.md). "
                                     "Filter on time_us, callee, caller or call_id to read only what can match.")
    qp.add_argument("sql", nargs="?", help="one SELECT statement, e.g. \"SELECT count(*) FROM audit\"")
    qp.add_argument("--since", help="only partitions from this time (ISO 8601, inclusive)")
    qp.add_argument("--until", help="only partitions before this time (ISO 8601, exclusive)")
    qp.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    qp.add_argument("--columns", action="store_true", help="list the view's columns and exit")
    qp.add_argument("--archive-only", dest="archive_only", action="store_true",
                    help="do not read the not-yet-archived stream")
    _common(qp)
    qp.set_defaults(func=_wrap(_cmd_query))

    cv = asub.add_parser("convert", help="rewrite gzip JSON-lines partitions as Parquet records files")
    cv.add_argument("--since", help="only partitions from this time (ISO 8601)")
    cv.add_argument("--until", help="only partitions before this time (ISO 8601)")
    cv.add_argument("--all", action="store_true",
                    help="also compact Parquet partitions of several files or of unpacked records files")
    _common(cv)
    cv.set_defaults(func=_wrap(_cmd_convert))

    a = asub.add_parser("archive", help="move the audit stream into hourly Parquet partitions")
    a.add_argument("--name", help="consumer name, stable across restarts (default HOST-PID)")
    a.add_argument("--group", default="archivers", help="consumer group shared by all archivers")
    a.add_argument("--retention-days", dest="retention_days", type=int, default=30,
                   help="delete partitions older than this (minimum 30)")
    a.add_argument("--batch", type=int, default=50_000,
                   help="entries per write (at most; a write also happens every 2 s)")
    a.add_argument("--once", action="store_true", help="archive what is there, apply retention, exit")
    a.add_argument("--log-level", dest="log_level", default="info")
    _common(a)
    a.set_defaults(func=_wrap(_cmd_archive))
