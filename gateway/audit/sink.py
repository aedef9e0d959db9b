"""``AuditSink``: the worker's side of the audit trail, off the INVITE's latency path.

The worker calls ``decision(...)`` right after it has acted on a decision
and ``outcome(...)`` for each ``Outcome`` action; both only append a tuple
to a list and never await. A flusher task, every ``interval`` (50 ms) or
as soon as ``batch`` entries wait, builds the entries and sends them to the
bounded Redis Stream in one pipeline (one XADD per chunk of up to 200
entries, column-wise, ``record.pack_chunk``; no MAXLEN: a full stream never
trims, it spools). When Redis does not answer, or the stream holds
``max_stream`` audit entries (``count_key``), the batch goes to the local spool
(``gateway.audit.spool``) and is replayed, oldest first, once Redis takes
entries again. ``close()`` flushes what is buffered (to Redis, else to the
spool) on a clean shutdown.

Outcomes are filed with their decision, so each needs the decision's time:
this worker remembers it for the calls it admitted; any other worker (a BYE
can reach another worker or node) reads it from ``{cag:audit}:open:<rid>``,
set with the decision (TTL 24 h, shortened to 5 min when the call ends).

One module on purpose: the flusher, the switch to the spool when Redis is down
or the stream is full, and the oldest-first replay together make one guarantee
(nothing lost, order kept), checked best when read in one place.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis as _Redis
from redis.exceptions import NoScriptError

from gateway.audit.record import (
    DECISION,
    Entry,
    decision_entry,
    is_end,
    outcome_entry,
    pack,
    pack_chunk,
    to_us,
    unpack,
)
from gateway.audit.spool import Spool

if TYPE_CHECKING:
    from gateway.proxy.actions import Outcome
    from policy.decision import Decision
    from policy.model import CallAttempt

log = logging.getLogger("cag.audit")

_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis = None

STREAM = "{cag:audit}:stream"
OPEN_PREFIX = "{cag:audit}:open:"
FIELD = "e"  # a stream entry of one audit entry (msgpack map): written before chunks, still read
CHUNK_FIELD = "c"  # a stream entry of several audit entries (``record.pack_chunk``)
COUNT_FIELD = "n"  # ... and how many
OPEN_TTL_S = 24 * 3600
ENDED_TTL_S = 300
REPLAY_CHUNK = 2000
SCRIPT_BATCH = 200  # entries per script call and stream entry: Redis runs one for ~0.2 ms


def count_key(stream: str) -> str:
    """The audit entries the stream holds (its XLEN counts chunks): INCRBY here, DECRBY by archivers."""
    return f"{stream}:entries"


async def stream_entries(client: Any, stream: str = STREAM) -> int:
    return int(await client.get(count_key(stream)) or 0)

# KEYS[1] the stream, KEYS[2] its entry count, then one open-call key per entry whose op is
# not "-"; ARGV[1] the packed chunk, ARGV[2] its entry count, then pairs (op, decision time)
# for those keys: "s" SET the open key, "x" shorten it. Returns the audit entries in the stream.
_SCRIPT = f"""
redis.call('XADD', KEYS[1], '*', '{CHUNK_FIELD}', ARGV[1], '{COUNT_FIELD}', ARGV[2])
local total = redis.call('INCRBY', KEYS[2], ARGV[2])
local k = 3
for i = 3, #ARGV, 2 do
  if ARGV[i] == 's' then
    redis.call('SET', KEYS[k], ARGV[i + 1], 'EX', {OPEN_TTL_S})
  else
    redis.call('EXPIRE', KEYS[k], {ENDED_TTL_S})
  end
  k = k + 1
end
return total
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


async def connect(url: str, timeout: float = 1.0) -> Any:
    """A Redis (or Redis Cluster) client of the audit's own, no retries: failure means spool."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from policy.redis_client import async_client, is_sentinel

    if is_sentinel(url):  # the sentinels name the primary, again after a failover
        return async_client(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                            retry=Retry(NoBackoff(), 0))
    client = aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        info = await client.info("cluster")
    except Exception:
        return client  # not reachable yet: a single server until it says otherwise
    if int(info.get("cluster_enabled", 0)) == 1:
        await client.aclose()
        return RedisCluster.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return client


class AuditSink:
    def __init__(
        self,
        redis_url: str,
        spool_dir: Path,
        *,
        stream: str = STREAM,
        max_stream: int = 1_000_000,
        batch: int = 1000,
        interval: float = 0.05,
        spool_max_bytes: int = 256 * 1024 * 1024,
        buffer_max: int = 200_000,
        retry_s: float = 0.5,
        outcome_wait_s: float = 10.0,
        open_max: int = 500_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis_url = redis_url
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.stream = stream
        self.max_stream = max_stream
        self.batch = batch
        self.interval = interval
        self.buffer_max = buffer_max
        self.retry_s = retry_s
        self.outcome_wait_s = outcome_wait_s
        self.open_max = open_max
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.redis_ok = True
        self._buf: list[tuple[Any, ...]] = []
        self._open: dict[str, int] = {}  # record id -> decision time (µs), calls this worker admitted
        self._pending: list[tuple[float, Entry]] = []  # outcomes whose decision time is not known yet
        self._client: Any = None
        self._down_until = 0.0
        self._stream_len = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._full_logged = False
        self._replay_path: Path | None = None
        self._replayed = 0

    # ---- the worker's calls (never block, never raise) ----------------------
    def decision(
        self, record_id: str, call: CallAttempt, decision: Decision, latency_s: float, node: str, worker: int
    ) -> None:
        self._put(("d", record_id, call, decision, latency_s, node, worker, to_us(self.clock())))

    def outcome(self, o: Outcome) -> None:
        self._put(("o", o.record_id, o.call_id, o.final_code, o.answered_at, o.ended_at, to_us(self.clock())))

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._closed:
            # A decision after close() (an INVITE that arrived while the worker was exiting):
            # straight to the spool, replayed when this worker index starts again.
            self._spool(self._build([item]))
            return
        if len(self._buf) >= self.buffer_max:
            self.stats["audit_buffer_dropped"] += 1
            return
        self._buf.append(item)
        if len(self._buf) >= self.batch:
            self._wake.set()

    # ---- life cycle -------------------------------------------------------
    async def start(self) -> None:
        self._client = await connect(self.redis_url)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-flusher")

    async def close(self, timeout: float = 5.0) -> None:
        """Clean shutdown: everything buffered reaches Redis, else the spool."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        # Whatever is still here (Redis hung past the timeout) is spooled synchronously.
        left = self._build(self._buf)
        self._buf = []
        left += [e for _, e in self._pending]
        self._pending = []
        if left:
            self._spool(left)
        self._closed = True
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:
                pass

    async def _run(self) -> None:
        while True:
            if not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self._flush()
            except Exception:  # a bug here must not stop the audit trail: log, spool, go on
                log.exception("audit flush failed")
            if self._closing and not self._buf:
                return

    # ---- building -----------------------------------------------------------
    def _build(self, items: list[tuple[Any, ...]]) -> list[Entry]:
        out: list[Entry] = []
        for it in items:
            if it[0] == "d":
                _, rid, call, decision, latency_s, node, worker, t_us = it
                e = decision_entry(rid, call, decision, latency_s, node, worker, t_us)
                if decision.admit:
                    self._remember(rid, t_us)
            else:
                _, rid, call_id, final_code, answered_at, ended_at, t_us = it
                e = outcome_entry(rid, call_id, self._open.get(rid), t_us, final_code, answered_at, ended_at)
                if "dt" in e and "ended_at" in e:
                    self._open.pop(rid, None)
            out.append(e)
        return out

    def _remember(self, rid: str, t_us: int) -> None:
        self._open[rid] = t_us
        opened = self._open
        if len(opened) > self.open_max:  # the oldest are also in Redis
            # A sixteenth at once: ``next(iter(dict))`` per insert would rescan the slots
            # of the entries ended since (out of order) at the dict's front each time.
            for old in list(itertools.islice(opened, len(opened) - self.open_max + self.open_max // 16)):
                del opened[old]

    async def _resolve(self, entries: list[Entry]) -> list[Entry]:
        """Fill ``dt`` of outcomes from Redis; those still unknown wait (bounded) in ``_pending``."""
        now = time.monotonic()
        held, self._pending = self._pending, []
        candidates = [(now, e) for e in entries if e["k"] != DECISION and "dt" not in e] + held
        if candidates:
            (values,) = await self._execute([("MGET", *[OPEN_PREFIX + e["rid"] for _, e in candidates])])
            for (_, e), v in zip(candidates, values, strict=True):
                if v is not None:
                    e["dt"] = int(v)
        out = [e for e in entries if e["k"] == DECISION or "dt" in e]
        out += [e for _, e in held if "dt" in e]
        for since, e in candidates:
            if "dt" in e:
                continue
            if now - since < self.outcome_wait_s and not self._closing:
                self._pending.append((since, e))
            else:
                self.stats["audit_outcome_orphan"] += 1  # its decision's time is unknown: filed on its own
                out.append(e)
        return out

    # ---- writing ------------------------------------------------------------
    async def _flush(self) -> None:
        items, self._buf = self._buf, []
        entries = self._build(items)
        if not entries and not self._pending and not self.spool:
            return
        now = time.monotonic()
        if now < self._down_until:
            await self._spool_async(entries)
            return
        try:
            entries = await self._resolve(entries)
            if entries:
                if self._stream_len + len(entries) > self.max_stream:
                    self._stream_len = await stream_entries(self._client, self.stream)
                if self._stream_len + len(entries) > self.max_stream:
                    self._stream_full()
                    await self._spool_async(entries)
                    return
                await self._xadd(entries)
            if not self.redis_ok:
                log.info("audit: Redis answers again; replaying the spool")
            self.redis_ok = True
            if self.spool:
                await self._replay()
            if not self.spool:
                self._full_logged = False
        except Exception as e:  # RedisError, OSError, timeouts: spool and retry later
            self._redis_down(e)
            await self._spool_async(entries)

    async def _xadd(self, entries: list[Entry]) -> None:
        """XADD the entries in chunks of ``SCRIPT_BATCH`` (one stream entry and one script call
        each, with the chunk's open-call keys).

        One stream entry per chunk, not per entry: Redis, the archiver's reads
        and its acknowledgements work per chunk, and the chunk is column-wise
        (``record.pack_chunk``) so the archiver decodes it into Arrow arrays.
        """
        cmds: list[tuple[Any, ...]] = []
        counter = count_key(self.stream)
        for i in range(0, len(entries), SCRIPT_BATCH):
            chunk = entries[i : i + SCRIPT_BATCH]
            keys: list[str] = [self.stream, counter]
            argv: list[Any] = [pack_chunk(chunk), len(chunk)]
            for e in chunk:
                if e["k"] == DECISION:
                    if e["decision"] != "reject":
                        keys.append(OPEN_PREFIX + e["rid"])
                        argv += ("s", e["t"])
                elif is_end(e):
                    keys.append(OPEN_PREFIX + e["rid"])
                    argv += ("x", e["t"])
            cmds.append(("EVALSHA", _SCRIPT_SHA, len(keys), *keys, *argv))
        try:
            res = await self._execute(cmds)
        except NoScriptError:
            await self._execute([("SCRIPT", "LOAD", _SCRIPT)])
            # a partly applied batch is sent again: duplicates are dropped downstream
            res = await self._execute(cmds)
        self._stream_len = int(res[-1])
        self.stats["audit_entries"] += len(entries)

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One pipeline; any error raises (the caller spools the batch).

        On a single server the commands are packed by hiredis in C and written
        in one go on a pooled connection: redis-py's own pipeline packs in
        Python at tens of µs per command, which at a few thousand entries a
        second would take the event loop from the INVITEs (bench/audit.py).
        """
        if _hiredis is None or not isinstance(self._client, _Redis):
            pipe = self._client.pipeline(transaction=False)
            for c in commands:
                pipe.execute_command(*c)
            return list(await pipe.execute())
        pool = self._client.connection_pool
        packed = b"".join([_hiredis.pack_command(c) for c in commands])
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            out = [await conn.read_response() for _ in commands]
        except BaseException:
            await conn.disconnect()  # replies may be half read: never reuse
            raise
        finally:
            await pool.release(conn)
        for r in out:
            if isinstance(r, Exception):
                raise r
        return out

    async def _replay(self) -> None:
        """Send closed spool files to the stream, oldest first, as far as the stream has room.

        ``_replayed`` counts the entries of the oldest file already sent, so a
        file larger than the room left is sent over several flushes; the file
        is deleted once all of it is in the stream (a crash before that sends
        some entries twice, which the merge downstream drops).
        """
        self.spool.close_current()
        files = self.spool.files()
        if not files:
            return
        path = files[0]
        if path != self._replay_path:
            self._replay_path, self._replayed = path, 0
        loop = asyncio.get_running_loop()
        frames = await loop.run_in_executor(None, lambda: list(self.spool.read(path)))
        entries: list[Entry] = []
        for f in frames[self._replayed :]:
            try:
                entries.append(unpack(f))
            except Exception:
                self.stats["audit_spool_bad_frame"] += 1
        n_frames = len(frames) - self._replayed
        entries = await self._resolve(entries)
        # The offset can only count frames when every frame became one entry, in order.
        exact = len(entries) == n_frames
        sent = 0
        while sent < len(entries):
            room = self.max_stream - self._stream_len
            if room <= 0:
                self._stream_len = await stream_entries(self._client, self.stream)
                room = self.max_stream - self._stream_len
                if room <= 0:
                    self._stream_full()
                    break
            chunk = entries[sent : sent + min(room, REPLAY_CHUNK)]
            await self._xadd(chunk)
            sent += len(chunk)
            if exact:
                self._replayed += len(chunk)
        self.stats["audit_replayed"] += sent
        if sent < len(entries):
            return
        await loop.run_in_executor(None, self.spool.remove, path)
        self._replay_path, self._replayed = None, 0
        log.info("audit: replayed spool file %s", path.name)

    def _stream_full(self) -> None:
        self.stats["audit_stream_full"] += 1
        if not self._full_logged:
            log.warning("audit stream %s holds %d entries (max %d): spooling until the archiver catches up",
                        self.stream, self._stream_len, self.max_stream)
            self._full_logged = True

    def _redis_down(self, e: BaseException) -> None:
        self.stats["audit_redis_errors"] += 1
        if self.redis_ok:
            log.warning("audit: Redis unavailable (%s); spooling to %s", e, self.spool.dir)
        self.redis_ok = False
        self._down_until = time.monotonic() + self.retry_s

    async def _spool_async(self, entries: list[Entry]) -> None:
        """Spool in a thread: fsync must not stall the event loop (the flusher awaits, so order holds)."""
        if not entries:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._spool, entries)

    def _spool(self, entries: list[Entry]) -> None:
        frames = [pack(e) for e in entries]
        refused = self.spool.append(frames)
        self.stats["audit_spooled"] += len(frames) - refused
        if refused:
            self.stats["audit_spool_dropped"] += refused

    @property
    def spool_bytes(self) -> int:
        return self.spool.bytes
