"""The only module that knows Redis (SPEC section 4).

Key layout (every key carries a hash tag, so the same code runs on the embedded
server and on Redis Cluster; every counter has a TTL):

``{cag:ref}:trunks`` / ``{cag:ref}:enterprises`` / ``{cag:ref}:filings``
    hash id -> msgpack of the record (``model_dump(mode="json")``). One tag
    for all reference data, so a whole-file write (``--replace`` included) is
    one MULTI/EXEC: all-or-nothing on a single server and on Cluster alike.
``{cag:ref}:version``
    counter bumped by every reference write; ``cag:ref:changed`` is PUBLISHed
    with the new value so workers reload at once (polling is the back-stop).
``{c:<callee>}:consent:<token>``
    hash: ``ent pur np gr ex max ev rv used`` (``np``: normalised purpose) (times in epoch ms, ``""`` = none);
    ``used`` is counted by ``cag_admit``.
``{c:<callee>}:dnc``
    hash: ``scope at``.
``{c:<callee>}:day:<enterprise>:<YYYYMMDD>`` / ``{c:<callee>}:day:*:<YYYYMMDD>``
    daily counters (callee-local day), TTL = seconds to callee-local midnight
    + ``DAY_TTL_SLACK``.
``{c:<callee>}:txn:<call-id|branch>``, ``{n:<caller>}:txn:…``, ``{t:<trunk>}:txn:…``
    per-transaction result (hash ``r`` msgpack result, ``c`` counted, ``f``
    refunded), TTL ``TXN_TTL`` (64 s, above the 32 s of SPEC section 4).
``{k:<token>}:callee``
    token index: the callee a token was granted for (``consent_other_callee``,
    moving a token, ``--replace``).
``{n:<caller>}:rate:<epoch s>`` / ``{t:<trunk>}:rate:<epoch s>``
    per-second counters, TTL 2 s.
``{t:<trunk>}:conc``
    zset call-id -> expiry (ms): concurrent calls; an entry expires after the
    engine's ``concurrency_timeout_s`` even if no BYE is ever seen.
``{e:<enterprise>}:unconsented``
    unconsented attempts in the current window (R6), TTL = the window.
``{cag:idx}:consents`` / ``{cag:idx}:dnc``
    sets of every stored token / DNC number. Chosen over SCAN because SCAN
    on Cluster must visit every node and is not a snapshot; a set is one
    read, so ``--replace`` knows exactly what to delete.

The hot path does not await Redis call by call: ``admit_callee``, ``rate``,
``token_callee`` … return futures, and every call made during one event-loop
turn goes out as ONE pipeline (see ``_Batcher``), which is what makes an
FCALL cost ~11 µs of client CPU instead of ~36 µs (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError, ResponseError

from policy.hotlink import HotLink, LinkTarget
from policy.model import (
    KIND_KEYS,
    KIND_MODELS,
    Consent,
    DncEntry,
    Enterprise,
    NumberFiling,
    Record,
    Trunk,
)
from policy.redact import redact_url
from policy.rules.purpose import normalize_purpose

_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis = None

log = logging.getLogger(__name__)

LIBRARY = "cag"
CHANNEL = "cag:ref:changed"
REF_VERSION = "{cag:ref}:version"
REF_KINDS = ("trunks", "enterprises", "filings")
IDX_CONSENTS = "{cag:idx}:consents"
IDX_DNC = "{cag:idx}:dnc"
TXN_TTL = 64  # s; SPEC section 4 asks for >= 32 s
DAY_TTL_SLACK = 3600  # s kept after callee-local midnight (clock skew, late refunds)
SOCKET_TIMEOUT = 2.0  # s; the engine's budget cuts a decision much earlier


def ref_key(kind: str) -> str:
    return f"{{cag:ref}}:{kind}"


def consent_key(callee: str, token: str) -> str:
    return f"{{c:{callee}}}:consent:{token}"


def dnc_key(callee: str) -> str:
    return f"{{c:{callee}}}:dnc"


def day_key(callee: str, enterprise_id: str, day: str) -> str:
    return f"{{c:{callee}}}:day:{enterprise_id}:{day}"


def total_day_key(callee: str, day: str) -> str:
    return f"{{c:{callee}}}:day:*:{day}"


def token_key(token: str) -> str:
    return f"{{k:{token}}}:callee"


def txn_key(tag: str, txn: str) -> str:
    return f"{{{tag}}}:txn:{txn}"


def rate_key(tag: str, second: int) -> str:
    return f"{{{tag}}}:rate:{second}"


def conc_key(trunk_id: str) -> str:
    return f"{{t:{trunk_id}}}:conc"


def unconsented_key(enterprise_id: str) -> str:
    return f"{{e:{enterprise_id}}}:unconsented"


class StoreError(Exception):
    """Redis is unreachable or answered with an error; the engine applies its fail mode."""


@dataclass(frozen=True, slots=True)
class CalleeResult:
    """What ``cag_admit`` said; counts are the values before this call."""

    consent_reason: str | None
    dnc_reason: str | None
    used: int
    evidence_ref: str | None
    consent_purpose: str | None
    day_count: int
    total_count: int
    counted: bool
    replay: bool
    refunded: bool  # replay of a transaction that was refunded (its decision was a rejection)
    keys: tuple[str, ...]  # for cag_refund


@dataclass(frozen=True, slots=True)
class RateResult:
    """What ``cag_rate`` said; counts are the values before this call."""

    rate_count: int
    concurrent: int
    counted: bool
    replay: bool
    refunded: bool
    keys: tuple[str, ...]  # for cag_refund


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _opt(v: Any) -> str | None:
    s = _s(v) if v is not None else ""
    return s or None


def _parse_callee(keys: tuple[str, ...]) -> Callable[[Any], CalleeResult]:
    def parse(r: Any) -> CalleeResult:
        return CalleeResult(
            consent_reason=_opt(r[0]),
            dnc_reason=_opt(r[1]),
            used=int(r[2]),
            evidence_ref=_opt(r[3]),
            consent_purpose=_opt(r[4]),
            day_count=int(r[5]),
            total_count=int(r[6]),
            counted=bool(int(r[7])),
            replay=bool(int(r[8])),
            refunded=bool(int(r[9])),
            keys=keys,
        )

    return parse


def _parse_rate(keys: tuple[str, ...]) -> Callable[[Any], RateResult]:
    def parse(r: Any) -> RateResult:
        return RateResult(
            int(r[0]), int(r[1]), bool(int(r[2])), bool(int(r[3])), bool(int(r[4])), keys
        )

    return parse


def _ms(t: datetime | None) -> str:
    return "" if t is None else str(round(t.timestamp() * 1000))


def _from_ms(v: Any) -> datetime | None:
    s = _s(v) if v is not None else ""
    return datetime.fromtimestamp(int(s) / 1000, UTC) if s else None


def _normalize(number: str) -> str:
    """Keys use the same normalised form as the engine's callee (E.164)."""
    try:
        from policy.numbers import normalize_number
    except ImportError:  # pragma: no cover - numbers.py is written in parallel
        return number
    return normalize_number(number) or number


@lru_cache(maxsize=1024)
def _purposes_arg(purposes: tuple[str, ...]) -> str:
    """An enterprise's purposes as ``cag_admit`` takes them: normalised, space-separated."""
    return " ".join(p for p in map(normalize_purpose, purposes) if p)


def _consent_fields(c: Consent) -> dict[str, str]:
    return {
        "ent": c.enterprise_id,
        "pur": c.purpose,
        "np": (c.purpose or "").strip().lower(),  # normalize_purpose, compared by cag_admit
        "gr": _ms(c.granted_at),
        "ex": _ms(c.expires_at),
        "max": "" if c.max_calls is None else str(c.max_calls),
        "ev": c.evidence_ref,
        "rv": _ms(c.revoked_at),
    }


def _load_library() -> str:
    return resources.files("policy").joinpath("lua/cag.lua").read_text()


class _Cluster(RedisCluster):
    """RedisCluster that routes FCALL by its first key locally.

    redis-py asks the server (COMMAND GETKEYS, one extra round trip) for the
    keys of commands with movable keys such as FCALL; that would double the
    latency of every admission. FCALL's keys are ``args[2 : 2 + numkeys]``,
    and all of ours share one slot, so the first key decides.
    """

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in ("FCALL", "FCALL_RO") and len(args) > 2 and int(args[1]) > 0:
            return int(self.keyslot(args[2]))
        return int(await super()._determine_slot(command, *args))


def _hiredis_packer(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` with hiredis's C ``pack_command``.

    redis-py's asyncio connections pack commands in Python (~35 µs for a
    16-argument FCALL on the reference box); hiredis does the same in C in
    ~1 µs. The output is the same RESP bytes. Without hiredis, ``base`` is
    returned unchanged.
    """
    if _hiredis is None or issubclass(base, _HiredisPack):
        return base
    return type("Hiredis" + base.__name__, (_HiredisPack, base), {})


class _HiredisPack:
    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "FUNCTION LOAD" style names
            args = (*args[0].split(), *args[1:])
        return [_hiredis.pack_command(args)]


_Entry = tuple[tuple[Any, ...], Callable[[Any], Any] | None, "asyncio.Future[Any]"]


class _Batcher:
    """Collects the commands issued during one event-loop turn into one pipeline.

    ``submit`` returns a future at once; the flush is scheduled with
    ``loop.call_soon``, i.e. after every coroutine that is ready in this turn
    has enqueued its calls. Works with the Cluster pipeline too (it groups the
    commands per node). A future whose waiter gave up (budget) is simply
    skipped when the answer arrives; the script still ran and its transaction
    record makes a retry count nothing twice.
    """

    def __init__(self, store: PolicyStore) -> None:
        self._store = store
        self._queue: list[_Entry] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(
        self, args: tuple[Any, ...], parse: Callable[[Any], Any] | None = None
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, parse, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._scheduled = False
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Entry]) -> None:
        try:
            results = await self._store._pipeline([e[0] for e in batch])
            retry = [i for i, r in enumerate(results) if _function_missing(r)]
            if retry:
                # Library missing (flushed server, new node, first start): load and retry once.
                await self._store.ensure_functions(force=True)
                again = await self._store._pipeline([batch[i][0] for i in retry])
                for i, r in zip(retry, again, strict=True):
                    results[i] = r
        except (RedisError, OSError, StoreError) as e:
            err = e if isinstance(e, StoreError) else StoreError(f"redis: {e}")
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        except (
            BaseException
        ) as e:  # cancellation on shutdown, or a bug: never leave waiters hanging
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreError(f"batch failed: {e!r}"))
            if isinstance(e, asyncio.CancelledError):
                raise
            log.exception("pipeline batch failed")
            return
        for (_, parse, fut), r in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(r, Exception):
                fut.set_exception(StoreError(f"redis: {r}"))
                continue
            try:
                fut.set_result(parse(r) if parse is not None else r)
            except Exception as e:  # a malformed reply must not hang the waiter
                fut.set_exception(StoreError(f"bad reply {r!r}: {e}"))

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except BaseException:  # shutting down
                pass


def _function_missing(r: Any) -> bool:
    return isinstance(r, ResponseError) and "function not found" in str(r).lower()


class PolicyStore:
    """Reference data, consents, DNC and counters in Redis or Redis Cluster."""

    def __init__(self, client: aioredis.Redis | RedisCluster, *, cluster: bool) -> None:
        self.client = client
        self.cluster = cluster
        self._code = _load_library()
        self._code_hash = hashlib.sha1(self._code.encode()).hexdigest()  # identity, not security
        self._functions_ok = False
        self._functions_lock = asyncio.Lock()
        self._batcher = _Batcher(self)
        self._hotlink: HotLink | None = None  # hot link (issue 13): set by connect()

    # ------------------------------------------------------------------ setup
    @classmethod
    async def connect(cls, url: str) -> PolicyStore:
        """Connect to ``url`` (redis://, rediss://, unix://); Cluster is detected with INFO cluster."""
        opts: dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": 1.0,
            # One quick retry: a pipeline of FCALLs is safe to resend (txn idempotency).
            "retry": Retry(NoBackoff(), 1),
        }
        client = aioredis.Redis.from_url(url, **opts)
        pool = client.connection_pool
        pool.connection_class = _hiredis_packer(pool.connection_class)
        try:
            info = await client.info("cluster")
        except (RedisError, OSError) as e:
            await client.aclose()
            raise StoreError(f"cannot reach redis at {redact_url(url)}: {e}") from e
        if int(info.get("cluster_enabled", 0)) == 1:
            await client.aclose()
            ccl = _Cluster.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=1.0)
            ckw = ccl.nodes_manager.connection_kwargs
            ckw["connection_class"] = _hiredis_packer(ckw.get("connection_class", Connection))
            try:
                await ccl.initialize()
            except (RedisError, OSError) as e:
                await ccl.aclose()
                raise StoreError(f"cannot reach redis cluster at {redact_url(url)}: {e}") from e
            return cls(ccl, cluster=True)
        store = cls(client, cluster=False)
        # --- hot link (issue 13, policy.hotlink): None keeps the pooled redis-py path ---
        target = LinkTarget.from_url(url) if _hiredis is not None else None
        store._hotlink = HotLink(target, reply_timeout=SOCKET_TIMEOUT) if target else None
        # --- end hot link ---
        return store

    async def close(self) -> None:
        if self._hotlink is not None:  # hot link (issue 13)
            self._hotlink.close()
        await self._batcher.aclose()
        await self.client.aclose()

    async def ping(self) -> bool:
        """PING (every primary on Cluster): the circuit breaker's recovery probe.

        After a Cluster master failover redis-py re-reads the slot map itself
        on the connection error, so the probe reaches the promoted replica
        (``tests/integration/test_cluster_failover.py``).
        """
        try:
            if self.cluster:
                await self.client.ping(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
            else:
                await self.client.ping()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return True

    async def ensure_functions(self, *, force: bool = False) -> None:
        """Load the ``cag`` library where it is missing or differs from ours.

        Compares the server's code (FUNCTION LIST WITHCODE) with
        policy/lua/cag.lua on every primary, so a server left with an older
        library by a previous release is upgraded, and any command that
        FCALLs works on a fresh server (``cag policy load`` before ``serve``).
        """
        if self._functions_ok and not force:
            return
        async with self._functions_lock:
            if self._functions_ok and not force:
                return
            try:
                if self.cluster:
                    assert isinstance(self.client, RedisCluster)
                    for node in self.client.get_primaries():
                        await self._ensure_on(
                            lambda *a, n=node: self.client.execute_command(*a, target_nodes=n)
                        )  # type: ignore[misc]
                else:
                    await self._ensure_on(self.client.execute_command)
            except (RedisError, OSError) as e:
                raise StoreError(f"cannot load the {LIBRARY} function library: {e}") from e
            self._functions_ok = True

    async def _ensure_on(self, execute: Callable[..., Awaitable[Any]]) -> None:
        listing = await execute("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY, "WITHCODE")
        for lib in listing or ():
            d = _pairs(lib)
            if _s(d.get("library_name", b"")) == LIBRARY:
                code = _s(d.get("library_code", b""))
                if hashlib.sha1(code.encode()).hexdigest() == self._code_hash:
                    return
        await execute("FUNCTION", "LOAD", "REPLACE", self._code)
        log.info("loaded redis function library %s", LIBRARY)

    async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write, return one reply (or ResponseError) per command.

        Cluster: redis-py's cluster pipeline (routing, MOVED/ASK). Single
        server: straight on a pooled connection, which skips the Pipeline
        object's per-command bookkeeping (~13 µs less client CPU per
        admission at 200 concurrent calls).
        """
        if any(c[0] == "FCALL" for c in commands):
            await self.ensure_functions()
        # --- hot link (issue 13, policy.hotlink): the single server's batches skip redis-py ---
        if self._hotlink is not None:
            return await self._hotlink.pipeline(commands)
        # --- end hot link ---
        if self.cluster or _hiredis is None:
            pipe = self.client.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command(*args)
            return list(await pipe.execute(raise_on_error=False))
        assert isinstance(self.client, aioredis.Redis)
        pool = self.client.connection_pool
        packed = b"".join([_hiredis.pack_command(c) for c in commands])
        for attempt in (1, 2):
            conn = await pool.get_connection()
            try:
                try:
                    await conn.send_packed_command(packed, check_health=False)
                except (ConnectionError, OSError):
                    # Nothing was executed on a connection that failed on write (e.g. a
                    # pooled connection to a restarted server): one retry on a new one.
                    await conn.disconnect()
                    if attempt == 2:
                        raise
                    continue
                out: list[Any] = []
                for _ in commands:
                    try:
                        out.append(await conn.read_response())
                    except ResponseError as e:
                        out.append(e)
                return out
            except BaseException:
                await conn.disconnect()  # replies may be half read: never reuse
                raise
            finally:
                await pool.release(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    async def fcall(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One FCALL outside the hot path (batched like the others all the same)."""
        return await self._batcher.submit(("FCALL", name, len(keys), *keys, *args))

    # --------------------------------------------------------------- hot path
    def admit_callee(
        self,
        *,
        callee: str,
        token: str | None,
        enterprise_id: str,
        purpose: str | None,
        allowed_purposes: tuple[str, ...],
        now_ms: int,
        quiet_fail: bool,
        daily_limit: int,
        total_limit: int,
        day: str,
        day_ttl: int,
        txn: str,
        dry_run: bool = False,
    ) -> asyncio.Future[CalleeResult]:
        """``cag_admit`` on the callee's slot: consent, DNC, quiet flag, daily caps; counts when all pass.

        ``purpose`` is the declared purpose, normalised; ``allowed_purposes`` the
        enterprise's purposes, against which the script judges the call's
        effective purpose (declared, else the consent's).
        """
        keys = (
            txn_key(f"c:{callee}", txn),
            consent_key(callee, token or ""),
            dnc_key(callee),
            day_key(callee, enterprise_id, day),
            total_day_key(callee, day),
        )
        args = (
            token or "",
            enterprise_id,
            purpose or "",
            now_ms,
            1 if quiet_fail else 0,
            daily_limit,
            total_limit,
            day_ttl + DAY_TTL_SLACK,
            1 if dry_run else 0,
            TXN_TTL,
            _purposes_arg(allowed_purposes),
        )
        return self._batcher.submit(("FCALL", "cag_admit", 5, *keys, *args), _parse_callee(keys))

    def token_callee(self, token: str) -> asyncio.Future[str | None]:
        """The callee a token was granted for (other slot than the callee's)."""
        return self._batcher.submit(("GET", token_key(token)), _opt)

    def rate(
        self,
        scope: Literal["n", "t"],
        ident: str,
        *,
        limit: int,
        max_concurrent: int = 0,
        now_ms: int,
        call_id: str,
        txn: str,
        concurrency_timeout_s: int = 14400,
        dry_run: bool = False,
    ) -> asyncio.Future[RateResult]:
        """``cag_rate`` on a caller-number (``n``) or trunk (``t``) slot."""
        tag = f"{scope}:{ident}"
        keys = (txn_key(tag, txn), rate_key(tag, now_ms // 1000), f"{{{tag}}}:conc")
        args = (
            limit,
            max_concurrent,
            now_ms,
            call_id,
            concurrency_timeout_s * 1000,
            1 if dry_run else 0,
            TXN_TTL,
        )
        return self._batcher.submit(("FCALL", "cag_rate", 3, *keys, *args), _parse_rate(keys))

    def refund(
        self, kind: Literal["admit", "rate"], keys: tuple[str, ...], call_id: str = ""
    ) -> asyncio.Future[bool]:
        """``cag_refund``: undo a transaction's counting (at most once)."""
        return self._batcher.submit(
            ("FCALL", "cag_refund", len(keys), *keys, kind, call_id), lambda r: bool(int(r))
        )

    def release(self, trunk_id: str, call_id: str) -> asyncio.Future[bool]:
        """``cag_release``: free a concurrency slot."""
        return self._batcher.submit(
            ("FCALL", "cag_release", 1, conc_key(trunk_id), call_id), lambda r: bool(int(r))
        )

    def unconsented(
        self, enterprise_id: str, threshold: int, window_s: int
    ) -> asyncio.Future[tuple[int, bool]]:
        """``cag_unconsented``: count one attempt; True once when the threshold is reached."""
        return self._batcher.submit(
            ("FCALL", "cag_unconsented", 1, unconsented_key(enterprise_id), threshold, window_s),
            lambda r: (int(r[0]), bool(int(r[1]))),
        )

    # --------------------------------------------------------- reference data
    async def ref_version(self) -> int:
        try:
            v = await self.client.get(REF_VERSION)
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return int(v or 0)

    async def load_refdata(self) -> tuple[list[Trunk], list[Enterprise], list[NumberFiling], int]:
        """A consistent snapshot (one MULTI/EXEC) of all reference data and its version."""
        try:
            pipe = self.client.pipeline(transaction=True)
            for kind in REF_KINDS:
                pipe.hgetall(ref_key(kind))
            pipe.get(REF_VERSION)
            trunks, ents, filings, version = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return (
            [Trunk.model_validate(msgpack.unpackb(v)) for v in trunks.values()],
            [Enterprise.model_validate(msgpack.unpackb(v)) for v in ents.values()],
            [NumberFiling.model_validate(msgpack.unpackb(v)) for v in filings.values()],
            int(version or 0),
        )

    async def _publish(self, version: int) -> None:
        try:
            await self.client.publish(CHANNEL, version)
        except (RedisError, OSError) as e:  # workers still poll the version
            log.warning("publish %s failed: %s", CHANNEL, e)

    async def subscribe_changes(
        self, on_change: Callable[[int], None], stop: asyncio.Event
    ) -> None:
        """Call ``on_change(version)`` for every notification until ``stop``; reconnects on errors."""
        while not stop.is_set():
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while not stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if msg and msg.get("type") == "message":
                        try:
                            on_change(int(msg["data"]))
                        except ValueError:
                            on_change(-1)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # reconnect; polling covers the gap
                log.debug("subscription to %s lost: %s", CHANNEL, e)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # already broken
                    pass

    # ------------------------------------------------------------------ writes
    async def put_records(
        self, kind: str, records: Sequence[Record], *, replace: bool = False
    ) -> int:
        """Upsert ``records`` of ``kind`` (``replace``: they become the whole set). Returns the count.

        Reference kinds: one MULTI/EXEC on the ``{cag:ref}`` slot, so the file
        applies entirely or not at all (Cluster included), then PUBLISH.
        Consents and DNC: validate first (the loader does); a single server
        applies them in one MULTI/EXEC (all-or-nothing). On Cluster the keys
        live on many slots, so they go out as one non-transactional pipeline:
        each record is written atomically, a failure half-way leaves the
        earlier records written (reloading the same file is idempotent).
        The reads that plan a consent/DNC write (token owners, the index for
        ``--replace``) precede the MULTI: run one loader per kind at a time.
        """
        if kind not in KIND_MODELS:
            raise ValueError(f"unknown kind {kind!r}")
        model = KIND_MODELS[kind]
        wrong = [r for r in records if not isinstance(r, model)]
        if wrong:
            raise TypeError(f"{kind}: expected {model.__name__} records, got {type(wrong[0]).__name__}")
        if kind in REF_KINDS:
            return await self._put_ref(kind, records, replace)
        if kind == "consents":
            return await self._put_consents([r for r in records if isinstance(r, Consent)], replace)
        if kind == "dnc":
            return await self._put_dnc([r for r in records if isinstance(r, DncEntry)], replace)
        raise ValueError(f"unknown kind {kind!r}")  # pragma: no cover

    async def _put_ref(self, kind: str, records: Sequence[Record], replace: bool) -> int:
        field = KIND_KEYS[kind]
        mapping = {getattr(r, field): msgpack.packb(r.model_dump(mode="json")) for r in records}
        try:
            pipe = self.client.pipeline(transaction=True)
            if replace:
                pipe.delete(ref_key(kind))
            if mapping:
                pipe.hset(ref_key(kind), mapping=mapping)
            pipe.incr(REF_VERSION)
            res = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        await self._publish(int(res[-1]))
        return len(mapping)

    async def _read(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for c in commands:
                pipe.execute_command(*c)
            return list(await pipe.execute())
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e

    async def _write(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Single server: one MULTI/EXEC; Cluster: one pipeline grouped per node."""
        if not commands:
            return
        try:
            pipe = self.client.pipeline(transaction=not self.cluster)
            for c in commands:
                pipe.execute_command(*c)
            await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e

    async def _put_consents(self, consents: list[Consent], replace: bool) -> int:
        tokens = [c.token for c in consents]
        current = await self._read([("GET", token_key(t)) for t in tokens])
        cmds: list[tuple[Any, ...]] = []
        if replace:
            (members,) = await self._read([("SMEMBERS", IDX_CONSENTS)])
            gone = sorted({_s(m) for m in members} - set(tokens))
            owners = await self._read([("GET", token_key(t)) for t in gone])
            for t, owner in zip(gone, owners, strict=True):
                if owner is not None:
                    cmds.append(("DEL", consent_key(_s(owner), t)))
                cmds.append(("DEL", token_key(t)))
            if gone:
                cmds.append(("SREM", IDX_CONSENTS, *gone))
        for c, old in zip(consents, current, strict=True):
            callee = _normalize(c.callee)
            if old is not None and _s(old) != callee:  # the token moved to another callee
                cmds.append(("DEL", consent_key(_s(old), c.token)))
            fields = _consent_fields(c)
            cmds.append(
                ("HSET", consent_key(callee, c.token), *[x for kv in fields.items() for x in kv])
            )
            cmds.append(("SET", token_key(c.token), callee))
        if tokens:
            cmds.append(("SADD", IDX_CONSENTS, *tokens))
        await self._write(cmds)
        return len(consents)

    async def _put_dnc(self, entries: list[DncEntry], replace: bool) -> int:
        numbers = [_normalize(e.number) for e in entries]
        cmds: list[tuple[Any, ...]] = []
        if replace:
            (members,) = await self._read([("SMEMBERS", IDX_DNC)])
            gone = sorted({_s(m) for m in members} - set(numbers))
            cmds += [("DEL", dnc_key(n)) for n in gone]
            if gone:
                cmds.append(("SREM", IDX_DNC, *gone))
        for e, n in zip(entries, numbers, strict=True):
            at = e.registered_at.isoformat() if e.registered_at else ""
            cmds.append(("HSET", dnc_key(n), "scope", e.scope, "at", at))
        if numbers:
            cmds.append(("SADD", IDX_DNC, *numbers))
        await self._write(cmds)
        return len(entries)

    async def grant_consent(self, consent: Consent) -> None:
        """Grant (or re-grant) one consent; its use count survives a re-grant of the same token."""
        await self._put_consents([consent], replace=False)

    async def revoke_consent(self, token: str, at: datetime) -> bool:
        """Mark a consent revoked at ``at``; effective on the next INVITE. False: unknown token."""
        (owner,) = await self._read([("GET", token_key(token))])
        if owner is None:
            return False
        key = consent_key(_s(owner), token)
        # HSET only while the hash exists, atomically: never recreate a consent deleted meanwhile.
        try:
            res = await self.client.eval(
                "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'rv', ARGV[1]) return 1 end return 0",
                1,
                key,
                _ms(at),
            )
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return bool(res)

    async def get_consent(self, token: str) -> Consent | None:
        (owner,) = await self._read([("GET", token_key(token))])
        if owner is None:
            return None
        callee = _s(owner)
        (h,) = await self._read([("HGETALL", consent_key(callee, token))])
        if not h:
            return None
        d = {_s(k): _s(v) for k, v in h.items()}
        granted = _from_ms(d.get("gr"))
        return Consent(
            token=token,
            callee=callee,
            enterprise_id=d.get("ent", ""),
            purpose=d.get("pur", "callback"),
            granted_at=granted or datetime.fromtimestamp(0, UTC),
            expires_at=_from_ms(d.get("ex")),
            max_calls=int(d["max"]) if d.get("max") else None,
            evidence_ref=d.get("ev", ""),
            revoked_at=_from_ms(d.get("rv")),
        )

    async def consent_used(self, token: str) -> int:
        """How many admitted calls a consent has counted (for explain / tests)."""
        (owner,) = await self._read([("GET", token_key(token))])
        if owner is None:
            return 0
        (v,) = await self._read([("HGET", consent_key(_s(owner), token), "used")])
        return int(v or 0)

    async def dnc_add(self, entry: DncEntry) -> None:
        await self._put_dnc([entry], replace=False)

    async def dnc_remove(self, number: str) -> bool:
        n = _normalize(number)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(dnc_key(n))
            pipe.srem(IDX_DNC, n)
            deleted, _ = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return bool(deleted)

    async def get_dnc(self, number: str) -> DncEntry | None:
        n = _normalize(number)
        (h,) = await self._read([("HGETALL", dnc_key(n))])
        if not h:
            return None
        d = {_s(k): _s(v) for k, v in h.items()}
        at = d.get("at") or None
        return DncEntry(number=n, scope=d.get("scope", "all"), registered_at=at)  # type: ignore[arg-type]

    async def set_status(
        self,
        kind: Literal["enterprise", "trunk"],
        ident: str,
        status: str,
        *,
        cause: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Suspend / resume / blacklist one trunk or enterprise; False when it does not exist.

        Compare-and-set in Lua (``cag_ref_cas``) so a suspension racing with a
        file load never resurrects an old record. For an enterprise,
        ``suspended`` records ``at`` and ``cause`` (shown by explain);
        ``active`` clears them.
        """
        plural = "enterprises" if kind == "enterprise" else "trunks"
        model = KIND_MODELS[plural]
        key = ref_key(plural)
        for _ in range(20):
            (old,) = await self._read([("HGET", key, ident)])
            if old is None:
                return False
            data = msgpack.unpackb(old)
            data["status"] = status
            if kind == "enterprise":
                if status == "active":
                    data["suspended_at"] = None
                    data["suspended_cause"] = None
                else:
                    data["suspended_at"] = (at or datetime.now(UTC)).isoformat()
                    data["suspended_cause"] = cause
            rec = model.model_validate(data)  # raises ValueError on a bad status
            new = msgpack.packb(rec.model_dump(mode="json"))
            version = await self.fcall("cag_ref_cas", (key, REF_VERSION), (ident, old, new))
            if int(version) >= 0:
                await self._publish(int(version))
                return True
        raise StoreError(f"{kind} {ident}: too many concurrent changes")


def _pairs(flat: Any) -> dict[str, Any]:
    if isinstance(flat, dict):
        return {_s(k): v for k, v in flat.items()}
    return {_s(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}
