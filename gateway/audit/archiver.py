"""``cag audit archive``: from the Redis Stream to hourly Parquet partitions.

Run one or several (same ``--group``, distinct ``--name``): each reads its
share with XREADGROUP — stream entries are chunks of up to 200 audit entries,
column-wise (``record.pack_chunk``), decoded straight into Arrow arrays —
collects up to ``batch`` entries or ``max_wait_s``, writes one entries file
per partition touched (fsync'd, ``columnar.write_file``), and only then
acknowledges: one script XACKs and XDELs the chunks and takes their entries
off the stream's entry count, so an acknowledged entry is on disk before it
leaves the stream. A killed archiver's unacknowledged chunks are read again
by its successor under the same name (XREADGROUP from id 0) or claimed by any
other archiver after ``claim_idle_s`` (XAUTOCLAIM). Written twice, an entry
counts once in every read (``engine``): idempotent by record id.

Every ``maintain_s`` the archiver also compacts partitions — a closed hour
into one records file sorted for look-ups (10 min after the hour, and again
after 25 h when the outcomes of the longest calls are in), an hour still
being written by concatenating its small entries files — and deletes
partitions older than the retention (30 days at least: less is refused).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from gateway.audit import columnar, segments
from gateway.audit.record import FIELDS, chunk_columns, unpack
from gateway.audit.sink import CHUNK_FIELD, COUNT_FIELD, FIELD, STREAM, count_key

log = logging.getLogger("cag.audit.archiver")

GROUP = "archivers"
CLOSE_GRACE_US = 10 * 60 * 1_000_000  # an hour is compacted this long after it ended
FINAL_AGE_US = 25 * segments.HOUR_US  # ... and once more when no outcome can still find its decision
RECENT_US = 26 * segments.HOUR_US  # maintenance compacts no older hour (``cag audit convert`` does)

# KEYS[1] the stream, KEYS[2] its entry count; ARGV[1] the group, then pairs (id, entries).
# An id already deleted (claimed and written twice) does not count again.
_ACK = """
local gone = 0
for i = 2, #ARGV, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then gone = gone + tonumber(ARGV[i + 1]) end
end
local left = tonumber(redis.call('DECRBY', KEYS[2], gone))
if left < 0 or redis.call('XLEN', KEYS[1]) == 0 then redis.call('SET', KEYS[2], 0); left = 0 end
return left
"""

Message = tuple[bytes, dict[bytes, bytes]]


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
        batch: int = 50_000,
        max_wait_s: float = 2.0,
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
        self.read_count = max(1, batch // 100)  # stream entries (chunks) per read
        self.max_wait_s = max_wait_s
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
        self._ack = client.register_script(_ACK)
        self.threads: int | None = 1  # compaction: one core, the gateway has the others
        self.compactions_per_pass = 4
        self.memory_limit = "1GB"

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
        """One batch: read (up to ``batch`` entries or ``max_wait_s``), write durably, acknowledge.
        Returns the entries archived."""
        msgs: list[Message] = []
        entries = 0
        deadline = time.monotonic() + self.max_wait_s
        while entries < self.batch:
            if self._own_pending:
                got = self._read("0", block=False)
                if not got:
                    self._own_pending = False
                    continue
            else:
                got = self._claim()
                if not got:
                    left_ms = int((deadline - time.monotonic()) * 1000)
                    got = self._read(">", block=True, block_ms=max(1, min(self.block_ms, left_ms)))
            if not got:
                break
            msgs += got
            entries += sum(_count(f) for _, f in got)
            if time.monotonic() >= deadline:
                break
        n = self._archive(msgs) if msgs else 0
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

    def _read(self, start: str, *, block: bool, block_ms: int | None = None) -> list[Message]:
        res = self.client.xreadgroup(
            self.group, self.name, {self.stream: start}, count=self.read_count,
            block=(block_ms or self.block_ms) if block else None,
        )
        if not res:
            return []
        msgs = res[0][1] if isinstance(res, list) else next(iter(res.values()))[0]
        return [(mid, fields) for mid, fields in msgs if fields]  # id-only rows: already deleted

    def _claim(self) -> list[Message]:
        """Entries another (dead) archiver left unacknowledged for ``claim_idle_s``."""
        res = self.client.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, start_id=self._claim_cursor,
            count=self.read_count
        )
        cursor, msgs = res[0], res[1]
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        ids_only = [m for m in msgs if not m or m[1] is None]
        if ids_only:
            # deleted from the stream but still pending: nothing to write, just settle them
            self.client.xack(self.stream, self.group, *[m[0] for m in ids_only if m])
        return [(m[0], m[1]) for m in msgs if m and m[1]]

    def _archive(self, msgs: list[Message]) -> int:
        table = self._decode(msgs)
        first = msgs[0][0].decode() if isinstance(msgs[0][0], bytes) else str(msgs[0][0])
        seg_name = f"{_safe(self.name)}-{first.replace('-', '_')}"
        if table.num_rows:
            for hour, part in columnar.by_hour(table):
                segments.write_segment(self.root, hour, part, seg_name)
        args: list[Any] = [self.group]
        for mid, fields in msgs:
            args += (mid, _count(fields) if CHUNK_FIELD.encode() in fields else 0)  # single: never counted
        self._ack(keys=[self.stream, count_key(self.stream)], args=args)
        self.archived += table.num_rows
        return table.num_rows

    def _decode(self, msgs: list[Message]) -> pa.Table:
        """Stream entries → one entries table; a chunk or entry that is not audit data is dropped
        and counted (the rest of the batch is kept)."""
        cols: dict[str, list[Any]] = {f: [] for f in FIELDS}
        total = 0
        chunks: list[tuple[bytes, int, dict[str, list[Any]]]] = []
        for mid, fields in msgs:
            try:
                raw = fields.get(CHUNK_FIELD.encode())
                if raw is not None:
                    n, c = chunk_columns(raw)
                else:
                    one = fields.get(FIELD.encode())
                    if one is None:
                        raise ValueError("no entry field")
                    e = unpack(one)  # a stream entry of one audit entry (a sink before chunks)
                    n, c = 1, {f: [v] for f, v in e.items()}
            except Exception as exc:
                self._bad(mid, exc)
                continue
            chunks.append((mid, n, c))
        for _, n, c in chunks:
            for f in FIELDS:
                col = c.get(f)
                cols[f].extend(col if col is not None else [None] * n)
            total += n
        try:
            return columnar.entries_table(total, cols)
        except Exception:
            pass
        # some value of the wrong type: convert chunk by chunk to find it
        good = []
        for mid, n, c in chunks:
            try:
                good.append(columnar.entries_table(n, c))
            except Exception as exc:
                self._bad(mid, exc)
        return columnar.concat(good, columnar.ENTRY_SCHEMA)

    def _bad(self, mid: bytes, exc: BaseException) -> None:
        self.errors += 1
        log.error("stream entry %s is not audit data (%s): dropped", mid, exc)

    def maintain(self) -> None:
        """Retention, then compaction: closed hours joined into a records file (once closed, once
        final), hours being written merged into fewer entries files."""
        old = segments.expired(self.root, self.clock(), self.retention_days)
        if old:
            segments.remove_partitions(old)
            log.info("retention: removed %d partitions older than %d days", len(old), self.retention_days)
        now = int(self.clock() * 1_000_000)
        compactions = 0
        for hour, path in segments.partitions(self.root, now - RECENT_US):
            if compactions >= self.compactions_per_pass:
                break  # the rest next pass: the stream is read in between
            files = segments.Files().add(segments.segments(path))
            closed = hour + segments.HOUR_US + CLOSE_GRACE_US <= now
            waiting = [p for p in files.entries + files.legacy if not p.name.startswith(segments.ORPHANS)]
            if closed and waiting and (not files.records or hour + FINAL_AGE_US <= now):
                segments.compact(path, self._report, min_segments=1, threads=self.threads,
                                 memory_limit=self.memory_limit)
                compactions += 1
            elif len(files.entries) >= self.compact_open_at:
                segments.merge_entries(path, self._report, min_files=self.compact_open_at // 2)

    def _report(self, path: Path, msg: str) -> None:
        self.errors += 1
        log.error("damaged audit segment %s: %s", path, msg)


def _count(fields: dict[bytes, bytes]) -> int:
    """Audit entries in a stream entry: a chunk says how many; a single entry is one."""
    n = fields.get(COUNT_FIELD.encode())
    if n is not None:
        try:
            return int(n)
        except ValueError:
            return 0
    return 1 if FIELD.encode() in fields else 0


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
