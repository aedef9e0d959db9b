"""``cag audit archive``: from the Redis Stream to compressed hourly segment files.

Run one or several (same ``--group``, distinct ``--name``): each reads its
share with XREADGROUP, writes one segment per partition touched by the batch
(fsync'd, ``segments.write_segment``), and only then XACKs and XDELs the
entries, so an acknowledged entry is on disk before it leaves the stream.
A killed archiver's unacknowledged entries are read again by its successor
under the same name (XREADGROUP from id 0) or claimed by any other archiver
after ``claim_idle_s`` (XAUTOCLAIM). Written twice, an entry is dropped by
the merge (export, compaction): idempotent by record id.

Every ``maintain_s`` the archiver also compacts partitions (a closed hour
into one file, the current hour when it has many) and deletes partitions
older than the retention (30 days at least: less is refused).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from gateway.audit import segments
from gateway.audit.record import Entry, sort_key, unpack
from gateway.audit.sink import FIELD, STREAM

log = logging.getLogger("cag.audit.archiver")

GROUP = "archivers"


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Archiver:
    def __init__(
        self,
        client: Any,
        root: Path,
        *,
        name: str,
        stream: str = STREAM,
        group: str = GROUP,
        retention_days: int = segments.MIN_RETENTION_DAYS,
        batch: int = 10_000,
        block_ms: int = 1000,
        claim_idle_s: float = 30.0,
        maintain_s: float = 600.0,
        compact_open_at: int = 64,
        clock: Any = time.time,
    ) -> None:
        segments.check_retention(retention_days)
        self.client = client
        self.root = Path(root)
        self.name = name
        self.stream = stream
        self.group = group
        self.retention_days = retention_days
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.maintain_s = maintain_s
        self.compact_open_at = compact_open_at
        self.clock = clock
        self.archived = 0
        self.errors = 0
        self._own_pending = True  # first read our own unacknowledged entries (a restart)
        self._next_maintain = 0.0
        self._claim_cursor = "0-0"

    @property
    def pending_first(self) -> bool:
        """Still reading this consumer's own unacknowledged entries (after a restart)."""
        return self._own_pending

    def ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def step(self) -> int:
        """One batch: read, write durably, acknowledge. Returns the entries archived."""
        n = 0
        if self._own_pending:
            msgs = self._read("0", block=False)
            if not msgs:
                self._own_pending = False
        else:
            msgs = self._claim()
            if not msgs:
                msgs = self._read(">", block=True)
        if msgs:
            n = self._archive(msgs)
        if time.monotonic() >= self._next_maintain:
            self.maintain()
            self._next_maintain = time.monotonic() + self.maintain_s
        return n

    def drain(self) -> int:
        """Archive everything the stream holds now, this consumer's pending entries first.

        For one-shot runs (``cag audit archive --once``, the tests and the
        benchmark); the service loops on ``step`` instead. Returns the entries archived.
        """
        total = 0
        while True:
            first = self.pending_first
            n = self.step()
            total += n
            if not n and not first:
                return total

    def _read(self, start: str, *, block: bool) -> list[tuple[bytes, dict[bytes, bytes]]]:
        res = self.client.xreadgroup(
            self.group, self.name, {self.stream: start}, count=self.batch,
            block=self.block_ms if block else None,
        )
        if not res:
            return []
        _, msgs = res[0]
        return [(mid, fields) for mid, fields in msgs if fields]  # id-only rows: already deleted

    def _claim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries another (dead) archiver left unacknowledged for ``claim_idle_s``."""
        res = self.client.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, start_id=self._claim_cursor, count=self.batch
        )
        cursor, msgs = res[0], res[1]
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        ids_only = [m for m in msgs if not m or m[1] is None]
        if ids_only:
            # deleted from the stream but still pending: nothing to write, just settle them
            self.client.xack(self.stream, self.group, *[m[0] for m in ids_only if m])
        return [(m[0], m[1]) for m in msgs if m and m[1]]

    def _archive(self, msgs: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        by_hour: dict[int, list[Entry]] = defaultdict(list)
        for mid, fields in msgs:
            raw = fields.get(FIELD.encode())
            try:
                if raw is None:
                    raise ValueError("no entry field")
                e = unpack(raw)
            except Exception as exc:
                self.errors += 1
                log.error("stream entry %s is not an audit entry (%s): dropped", mid, exc)
                continue
            by_hour[segments.hour_of(sort_key(e)[0])].append(e)
        first = msgs[0][0].decode() if isinstance(msgs[0][0], bytes) else str(msgs[0][0])
        seg_name = f"{_safe(self.name)}-{first.replace('-', '_')}"
        for hour, entries in sorted(by_hour.items()):
            segments.write_segment(self.root, hour, entries, seg_name)
        ids = [mid for mid, _ in msgs]
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()
        n = sum(len(v) for v in by_hour.values())
        self.archived += n
        return n

    def maintain(self) -> None:
        """Retention, then compaction of closed hours (and of a crowded current hour)."""
        old = segments.expired(self.root, self.clock(), self.retention_days)
        if old:
            segments.remove_partitions(old)
            log.info("retention: removed %d partitions older than %d days", len(old), self.retention_days)
        current = segments.hour_of(int(self.clock() * 1_000_000))
        for hour, path in segments.partitions(self.root):
            n = len(segments.segments(path))
            if (hour < current - segments.HOUR_US and n > 1) or n >= self.compact_open_at:
                segments.compact(path, self._report)

    def _report(self, path: Path, msg: str) -> None:
        self.errors += 1
        log.error("damaged audit segment %s: %s", path, msg)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in name)


def run(client: Any, root: Path, *, stop: Any, **kwargs: Any) -> int:
    """The service loop: ``stop()`` true ends it after the current batch."""
    arch = Archiver(client, root, **kwargs)
    arch.ensure_group()
    log.info("archiver %s: stream %s group %s -> %s (retention %d days)",
             arch.name, arch.stream, arch.group, root, arch.retention_days)
    backoff = 0.1
    while not stop():
        try:
            arch.step()
            backoff = 0.1
        except Exception as e:  # Redis away, disk full: log, wait, retry; nothing is acked
            log.error("archiver: %s; retrying in %.1fs", e, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            try:
                arch.ensure_group()  # a restarted Redis without its AOF lost the group
            except Exception:
                pass
    log.info("archiver %s stopped after %d entries", arch.name, arch.archived)
    return 0
