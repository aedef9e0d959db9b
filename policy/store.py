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
Consents and DNC (policy/layout.py has the whole story and the encodings):
``{c:<bucket>}:dnc:<gen>`` / ``{c:<bucket>}:cs:<gen>``
    hashes of the numbers of one 1,000-number block (bucket = the number
    without its last three digits), one per generation; ``{cag:ref}:gen`` names the live layers
    (``base[,overlay]``) and is switched atomically by a load
    (policy/bulk.py), so loads are all-or-nothing on Cluster too.
``{c:<bucket>}:cu`` / ``{c:<bucket>}:crv``
    consent use counts (counted by ``cag_admit``) and operator revocations:
    operator state outside the generations, which no reload undoes.
``{k:<shard>}:tok:<gen>``
    token -> callee (``consent_other_callee``, revoke, show).
``{g:<kind>:<gen>:<shard>}:b``
    the buckets a generation wrote, so deleting it needs no SCAN.
``{c:<bucket>}<suffix>:day:<enterprise>:<YYYYMMDD>`` / ``…:day:*:<YYYYMMDD>``
    daily counters (callee-local day), TTL = seconds to callee-local midnight
    + ``DAY_TTL_SLACK``.
``{c:<bucket>}<suffix>:txn:<call-id|branch>``, ``{n:<caller>}:txn:…``, ``{t:<trunk>}:txn:…``
    per-transaction result (hash ``r`` msgpack result, ``c`` counted, ``f``
    refunded, ``u`` the consent counted), TTL ``TXN_TTL`` (64 s, above the 32 s of SPEC section 4).
``{n:<caller>}:rate:<epoch s>`` / ``{t:<trunk>}:rate:<epoch s>``
    per-second counters, TTL 2 s.
``{t:<trunk>}:conc``
    zset call-id -> expiry (ms): concurrent calls; an entry expires after the
    engine's ``concurrency_timeout_s`` even if no BYE is ever seen.
``{e:<enterprise>}:unconsented``
    unconsented attempts in the current window (R6), TTL = the window.
``{cag:ref}:ops``
    operator statuses of trunks and enterprises (suspend/resume, manual or
    automatic), applied over the loaded records: a reload does not lift them.

The hot path does not await Redis call by call: ``admit_callee``, ``rate``,
``token_callee`` … return futures, and every call made during one event-loop
turn goes out as ONE pipeline (see ``_Batcher``), which is what makes an
FCALL cost ~11 µs of client CPU instead of ~36 µs (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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

from policy.bulk import BATCH_ROWS, GC_GRACE_S, LayerWriter
from policy.hotlink import HotLink, LinkTarget
from policy.layout import (
    GEN_POINTER,
    GEN_SEQ,
    OPS,
    callee_tag,
    consent_field,
    consent_layer_key,
    dnc_decode,
    dnc_layer_key,
    dnc_value,
    from_ms,
    index_key,
    index_shard,
    pack_consent,
    parse_layers,
    revoked_key,
    split,
    token_layer_key,
    token_shard,
    unpack_consent,
    used_key,
)
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
from policy.redis_client import async_client
from policy.rules.purpose import normalize_purpose

_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis = None

log = logging.getLogger(__name__)

LIBRARY = "cag"
CHANNEL = "cag:ref:changed"
LAYERS_CHANGED = "layers"  # message on CHANNEL: the consent/DNC layer pointer moved
REF_VERSION = "{cag:ref}:version"
REF_KINDS = ("trunks", "enterprises", "filings")
REF_MULTI_MAX = 5000  # reference records written in one MULTI; more are staged (RefWriter)
TXN_TTL = 64  # s; SPEC section 4 asks for >= 32 s
DAY_TTL_SLACK = 3600  # s kept after callee-local midnight (clock skew, late refunds)
SOCKET_TIMEOUT = 2.0  # s; the engine's budget cuts a decision much earlier


def ref_key(kind: str) -> str:
    return f"{{cag:ref}}:{kind}"


def day_key(callee: str, enterprise_id: str, day: str) -> str:
    return f"{callee_tag(callee)}:day:{enterprise_id}:{day}"


def total_day_key(callee: str, day: str) -> str:
    return f"{callee_tag(callee)}:day:*:{day}"


def callee_txn_key(callee: str, txn: str) -> str:
    return f"{callee_tag(callee)}:txn:{txn}"


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
        # Consent/DNC layer pointers ({cag:ref}:gen), refreshed by ref_version/load_refdata.
        self._gens: dict[str, tuple[int, ...]] | None = None
        self._hotlink: HotLink | None = None  # hot link (issue 13): set by connect()

    # ------------------------------------------------------------------ setup
    @classmethod
    async def connect(cls, url: str) -> PolicyStore:
        """Connect to ``url`` (redis://, rediss://, unix://, redis+sentinel://); Cluster is detected with INFO cluster.

        Sentinel (policy/redis_client.py): the client asks the sentinels for
        the primary and again after a connection breaks, so a failover needs
        no virtual IP; in the gap the engine's breaker applies the fail mode.
        """
        opts: dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": 1.0,
            # One quick retry: a pipeline of FCALLs is safe to resend (txn idempotency).
            "retry": Retry(NoBackoff(), 1),
        }
        try:
            client = async_client(url, **opts)
        except ValueError as e:  # a malformed URL (the password is never in the message)
            raise StoreError(f"bad redis URL {redact_url(url)}: {e}") from e
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
        if any(c[0] in ("FCALL", "FCALL_RO") for c in commands):
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

    async def bulk_pipeline(self, commands: Sequence[tuple[Any, ...]], timeout: float = 30.0) -> list[Any]:
        """Like ``_pipeline`` for loads: thousands of commands, replies drained straight from hiredis.

        redis-py's ``read_response`` costs ~30 µs a reply (a timeout context
        each); a load reads ~50,000 replies a second, so on a single server the
        replies are parsed in one loop over the connection's hiredis reader.
        Cluster (and no hiredis): ``_pipeline``.
        """
        if self.cluster or _hiredis is None or not commands:
            return await self._pipeline(commands)
        if any(c[0] in ("FCALL", "FCALL_RO") for c in commands):
            await self.ensure_functions()
        from redis._parsers.hiredis import NOT_ENOUGH_DATA

        assert isinstance(self.client, aioredis.Redis)
        pool = self.client.connection_pool
        packed = b"".join([_hiredis.pack_command(c) for c in commands])
        conn = await pool.get_connection()
        # A load's batch is megabytes: Redis may still be busy with the batch before it
        # when this one fills the socket buffer, so the write gets the bulk timeout too,
        # not the 2 s the decisions' connections use.
        hot_timeout = conn.socket_timeout
        conn.socket_timeout = timeout
        try:
            await conn.send_packed_command(packed, check_health=False)
            parser: Any = conn._parser
            reader = getattr(parser, "_reader", None)
            out: list[Any] = []
            async with asyncio.timeout(timeout):
                if reader is None or not hasattr(parser, "read_from_socket"):
                    for _ in commands:
                        try:
                            out.append(await conn.read_response())
                        except ResponseError as e:
                            out.append(e)
                    return out
                n = len(commands)
                while len(out) < n:
                    r = reader.gets()
                    if r is NOT_ENOUGH_DATA:
                        await parser.read_from_socket()
                        continue
                    out.append(r)
            return out
        except BaseException:
            await conn.disconnect()  # replies may be half read: never reuse
            raise
        finally:
            conn.socket_timeout = hot_timeout
            await pool.release(conn)

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
        gens = self._gens
        if gens is None:  # first call of this store: learn the layer pointers, then ask
            return asyncio.ensure_future(self._admit_after_refresh(locals()))
        bucket, _ = split(callee)
        clayers = gens.get("consents", ())
        dlayers = gens.get("dnc", ())
        keys = (
            callee_txn_key(callee, txn),
            day_key(callee, enterprise_id, day),
            total_day_key(callee, day),
            used_key(bucket),
        )
        layer_keys = (
            revoked_key(bucket),
            *[consent_layer_key(bucket, g) for g in clayers],
            *[dnc_layer_key(bucket, g) for g in dlayers],
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
            consent_field(callee, token or ""),
            split(callee)[1],
            len(clayers),
            len(dlayers),
        )
        nkeys = len(keys) + len(layer_keys)
        return self._batcher.submit(
            ("FCALL", "cag_admit", nkeys, *keys, *layer_keys, *args), _parse_callee(keys)
        )

    async def _admit_after_refresh(self, kw: dict[str, Any]) -> CalleeResult:
        await self.refresh_layers()
        kw = {k: v for k, v in kw.items() if k not in ("self", "gens")}
        return await self.admit_callee(**kw)

    def token_callee(self, token: str) -> asyncio.Future[str | None]:
        """The callee a token was granted for (other slot than the callee's)."""
        gens = self._gens
        if gens is None:
            return asyncio.ensure_future(self._token_after_refresh(token))
        layers = gens.get("consents", ())
        if not layers:
            fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut
        shard = token_shard(token)
        keys = [token_layer_key(shard, g) for g in layers]
        return self._batcher.submit(("FCALL_RO", "cag_token", len(keys), *keys, token), _opt)

    async def _token_after_refresh(self, token: str) -> str | None:
        await self.refresh_layers()
        return await self.token_callee(token)

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
        """The reference version; also refreshes the consent/DNC layer pointers (same slot, one trip).

        The engine polls this (and is notified on change), so a worker sees a
        load's generation switch within its refresh interval; the loader waits
        ``GC_GRACE_S`` before deleting the generation it replaced.
        """
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(REF_VERSION)
            pipe.hgetall(GEN_POINTER)
            v, gens = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        self._set_layers(gens)
        return int(v or 0)

    async def refresh_layers(self) -> dict[str, tuple[int, ...]]:
        """Read the consent/DNC layer pointers now (first admission, CLI look-ups)."""
        try:
            gens = await self.client.hgetall(GEN_POINTER)
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return self._set_layers(gens)

    def _set_layers(self, raw: Any) -> dict[str, tuple[int, ...]]:
        gens = {_s(k): parse_layers(v) for k, v in (raw or {}).items()}
        self._gens = gens
        return gens

    async def load_refdata(self) -> tuple[list[Trunk], list[Enterprise], list[NumberFiling], int]:
        """A consistent snapshot (one MULTI/EXEC) of all reference data and its version.

        Operator statuses (``OPS``: suspend/resume by hand or by the engine)
        are applied over the loaded records here, which is why reloading a
        trunks or enterprises file does not lift a suspension.
        """
        try:
            pipe = self.client.pipeline(transaction=True)
            for kind in REF_KINDS:
                pipe.hgetall(ref_key(kind))
            pipe.get(REF_VERSION)
            pipe.hgetall(OPS)
            pipe.hgetall(GEN_POINTER)
            trunks, ents, filings, version, ops, gens = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        self._set_layers(gens)
        opmap = {_s(k): msgpack.unpackb(v) for k, v in (ops or {}).items()}
        return (
            [_with_op(Trunk, "trunk", k, v, opmap) for k, v in trunks.items()],  # type: ignore[misc]
            [_with_op(Enterprise, "enterprise", k, v, opmap) for k, v in ents.items()],  # type: ignore[misc]
            [NumberFiling.model_validate(msgpack.unpackb(v)) for v in filings.values()],
            int(version or 0),
        )

    async def get_ref(self, kind: str, ident: str) -> Record | None:
        """One reference record (operator status applied), without reading the whole kind."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(ref_key(kind), ident)
            pipe.hget(OPS, f"{_OP_PREFIX.get(kind, '')}:{ident}")
            raw, op = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        if raw is None:
            return None
        opmap = {f"{_OP_PREFIX.get(kind, '')}:{ident}": msgpack.unpackb(op)} if op else {}
        if kind in _OP_PREFIX:
            return _with_op(KIND_MODELS[kind], _OP_PREFIX[kind], ident, raw, opmap)
        return KIND_MODELS[kind].model_validate(msgpack.unpackb(raw))

    async def scan_ref(self, kind: str, count: int = 1000) -> AsyncIterator[Record]:
        """Every record of a reference kind, read in bounded HSCAN steps (``show`` of a big kind)."""
        opmap: dict[str, Any] = {}
        if kind in _OP_PREFIX:
            try:
                opmap = {_s(k): msgpack.unpackb(v) for k, v in (await self.client.hgetall(OPS)).items()}
            except (RedisError, OSError) as e:
                raise StoreError(f"redis: {e}") from e
        cursor = 0
        while True:
            try:
                cursor, items = await self.client.hscan(ref_key(kind), cursor, count=count)
            except (RedisError, OSError) as e:
                raise StoreError(f"redis: {e}") from e
            for k, v in _pairs(items).items():
                if kind in _OP_PREFIX:
                    yield _with_op(KIND_MODELS[kind], _OP_PREFIX[kind], k, v, opmap)
                else:
                    yield KIND_MODELS[kind].model_validate(msgpack.unpackb(v))
            if not cursor:
                return

    async def _publish(self, version: int) -> None:
        try:
            await self.client.publish(CHANNEL, version)
        except (RedisError, OSError) as e:  # workers still poll the version
            log.warning("publish %s failed: %s", CHANNEL, e)

    async def publish_layers(self) -> None:
        """Tell every worker the consent/DNC layers moved (they re-read the pointer at once)."""
        try:
            await self.client.publish(CHANNEL, LAYERS_CHANGED)
        except (RedisError, OSError) as e:  # workers still poll
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
                        if _s(msg["data"]) == LAYERS_CHANGED:
                            # A consent/DNC switch: re-read the layer pointer (one HGETALL),
                            # not all reference data (which a version change would cause).
                            try:
                                await self.refresh_layers()
                            except StoreError as e:
                                log.debug("layer refresh failed (the version poll retries): %s", e)
                            continue
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

    # ------------------------------------------------------------------ plumbing
    async def _call(self, *args: Any) -> Any:
        """One command outside the hot path; errors become StoreError."""
        try:
            return await self.client.execute_command(*args)
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e

    _call_raw = _call

    async def _checked(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """A non-transactional pipeline whose every reply must be a success."""
        if not commands:
            return []
        try:
            results = await self.bulk_pipeline(commands)
        except (RedisError, OSError, TimeoutError) as e:
            raise StoreError(f"redis: {e}") from e
        for r in results:
            if isinstance(r, Exception):
                raise StoreError(f"redis: {r}")
        return results

    async def _read(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        return await self._checked(commands)

    # ------------------------------------------------------------------ writes
    async def put_records(
        self, kind: str, records: Sequence[Record], *, replace: bool = False
    ) -> int:
        """Upsert ``records`` of ``kind`` (``replace``: they become the whole set). Returns the count.

        All-or-nothing on a single server and on Cluster alike. Reference
        kinds: one MULTI/EXEC on the ``{cag:ref}`` slot (a staged hash swapped
        in for big sets, so no single command runs long). Consents and DNC: a
        new generation switched in by one script (policy/bulk.py); a
        duplicate key raises ValueError and switches nothing. Streaming file
        loads use ``LayerWriter`` / ``RefWriter`` directly.
        """
        if kind not in KIND_MODELS:
            raise ValueError(f"unknown kind {kind!r}")
        model = KIND_MODELS[kind]
        wrong = [r for r in records if not isinstance(r, model)]
        if wrong:
            raise TypeError(f"{kind}: expected {model.__name__} records, got {type(wrong[0]).__name__}")
        if kind in REF_KINDS:
            w = RefWriter(self, kind, replace=replace)
            await w.begin()
            await w.add(records)
            await w.commit()
            return len(records)
        lw = LayerWriter(self, kind, replace=replace)
        await lw.begin()
        try:
            for i in range(0, len(records), BATCH_ROWS):
                await lw.add([row_of(r) for r in records[i : i + BATCH_ROWS]])
            await lw.finish()
            if lw.suspects:
                raise ValueError(f"{kind}: duplicate keys in the records: {sorted(lw.suspects)[:5]}")
        except BaseException:
            await lw.abort()
            raise
        await lw.commit(grace_s=GC_GRACE_S)
        return len(records)

    async def layer_writer(self, kind: str, *, replace: bool) -> LayerWriter:
        """A started streaming load of ``dnc`` or ``consents`` (``add`` rows from ``row_of``, ``finish``, ``commit``)."""
        w = LayerWriter(self, kind, replace=replace)
        await w.begin()
        return w

    async def _ensure_layer(self, kind: str) -> tuple[int, ...]:
        """The kind's layers; a first base generation when none exists (single-record writes)."""
        layers = (await self.refresh_layers()).get(kind, ())
        if layers:
            return layers
        # No version bump: an empty kind has nothing to switch from; workers read the
        # pointer with every version poll (refresh interval, 0.5 s) and on the publish.
        gen = int(await self._call("INCR", GEN_SEQ))
        await self._call("HSETNX", GEN_POINTER, kind, str(gen))
        await self.publish_layers()
        return (await self.refresh_layers()).get(kind, ())

    async def _token_owner(self, token: str, layers: tuple[int, ...]) -> str | None:
        if not layers:
            return None
        keys = [token_layer_key(token_shard(token), g) for g in layers]
        (owner,) = await self._checked([("FCALL_RO", "cag_token", len(keys), *keys, token)])
        return _opt(owner)

    async def grant_consent(self, consent: Consent) -> None:
        """Grant (or re-grant) one consent in the top layer: effective on the next INVITE.

        Its use count (operator state) survives; an explicit re-grant clears
        an operator revocation of the same token (a file reload does not).
        A token granted before for another callee is removed there.
        """
        layers = await self._ensure_layer("consents")
        top = layers[0]
        callee = _normalize(consent.callee)
        token = consent.token
        old = await self._token_owner(token, layers)
        cmds: list[tuple[Any, ...]] = []
        if old is not None and old != callee:
            ob, _ = split(old)
            cmds += [("HDEL", consent_layer_key(ob, g), consent_field(old, token)) for g in layers]
        bucket, _ = split(callee)
        field = consent_field(callee, token)
        cmds += [
            ("HSET", consent_layer_key(bucket, top), field, _pack(consent)),
            ("HSET", token_layer_key(token_shard(token), top), token, callee),
            ("SADD", index_key("consents", top, index_shard(bucket)), bucket),
            ("HDEL", revoked_key(bucket), field),
        ]
        await self._checked(cmds)

    async def revoke_consent(self, token: str, at: datetime) -> bool:
        """Record an operator revocation at ``at``; effective on the next INVITE. False: unknown token.

        Kept apart from the loaded consent (``{c:<bucket>}:crv``), so reloading
        the consent file does not re-grant it.
        """
        layers = (await self.refresh_layers()).get("consents", ())
        callee = await self._token_owner(token, layers)
        if callee is None:
            return False
        bucket, _ = split(callee)
        keys = [revoked_key(bucket), *[consent_layer_key(bucket, g) for g in layers]]
        res = await self.fcall("cag_revoke", keys, (consent_field(callee, token), _ms(at)))
        return bool(int(res))

    async def _consent_raw(self, token: str) -> tuple[str, dict[str, Any], str] | None:
        layers = (await self.refresh_layers()).get("consents", ())
        callee = await self._token_owner(token, layers)
        if callee is None:
            return None
        bucket, _ = split(callee)
        field = consent_field(callee, token)
        replies = await self._checked(
            [("HGET", consent_layer_key(bucket, g), field) for g in layers]
            + [("HGET", revoked_key(bucket), field), ("HGET", used_key(bucket), field)]
        )
        *found, rvo, used = replies
        value = next((v for v in found if v is not None), None)
        if not value:  # absent, or a tombstone
            return None
        d = unpack_consent(value)
        if rvo is not None and (d.get("rv") in ("", None) or int(rvo) < int(d["rv"])):
            d["rv"] = int(rvo)
        return callee, d, _s(used) if used is not None else "0"

    async def get_consent(self, token: str) -> Consent | None:
        """The consent as the gateway judges it (an operator revocation shown as ``revoked_at``)."""
        raw = await self._consent_raw(token)
        if raw is None:
            return None
        callee, d, _ = raw
        return Consent(
            token=token,
            callee=callee,
            enterprise_id=d.get("ent", ""),
            purpose=d.get("pur") or "callback",
            granted_at=from_ms(d.get("gr")) or datetime.fromtimestamp(0, UTC),
            expires_at=from_ms(d.get("ex")),
            max_calls=int(d["max"]) if d.get("max") not in ("", None) else None,
            evidence_ref=d.get("ev", ""),
            revoked_at=from_ms(d.get("rv")),
        )

    async def consent_used(self, token: str) -> int:
        """How many admitted calls a consent has counted (for explain / tests)."""
        raw = await self._consent_raw(token)
        return int(raw[2]) if raw is not None else 0

    async def set_consent_used(self, token: str, used: int) -> bool:
        """Set a consent's use count (operator correction; tests). False: unknown token."""
        layers = (await self.refresh_layers()).get("consents", ())
        callee = await self._token_owner(token, layers)
        if callee is None:
            return False
        await self._checked([("HSET", used_key(split(callee)[0]), consent_field(callee, token), used)])
        return True

    async def consents_for(self, callee: str) -> list[Consent]:
        """Every consent granted for one callee (one bucket read per layer)."""
        n = _normalize(callee)
        bucket, suffix = split(n)
        layers = (await self.refresh_layers()).get("consents", ())
        seen: dict[str, bytes] = {}
        for g in layers:
            (h,) = await self._checked([("HGETALL", consent_layer_key(bucket, g))])
            for k, v in (h or {}).items():
                f = _s(k)
                if f.startswith(suffix + ":") and f not in seen:
                    seen[f] = v
        out = []
        for f, v in sorted(seen.items()):
            if v:
                c = await self.get_consent(f.split(":", 1)[1])
                if c is not None and c.callee == n:
                    out.append(c)
        return out

    async def export_layered(self, kind: str) -> AsyncIterator[Record]:
        """Every live DNC entry or consent, bucket by bucket (bounded reads; ``policy export``).

        Overlay buckets first (their entries shadow the base's), then the base
        buckets the overlay did not have. Consents carry an operator revocation
        as ``revoked_at``, like ``get_consent``.
        """
        from policy.bulk import bucket_batches

        layers = (await self.refresh_layers()).get(kind, ())
        layer_key = dnc_layer_key if kind == "dnc" else consent_layer_key
        done: set[str] = set()  # buckets already written (those of the overlay: small)
        for i, gen in enumerate(layers):
            async for batch in bucket_batches(self, kind, gen):
                todo = [b for b in batch if b not in done]
                cmds: list[tuple[Any, ...]] = []
                for b in todo:
                    cmds += [("HGETALL", layer_key(b, g)) for g in layers]
                    if kind == "consents":
                        cmds.append(("HGETALL", revoked_key(b)))
                replies = await self._checked(cmds)
                per = len(layers) + (1 if kind == "consents" else 0)
                for j, b in enumerate(todo):
                    got = replies[j * per : (j + 1) * per]
                    merged: dict[str, Any] = {}
                    for h in got[: len(layers)]:
                        for f, v in _pairs(h).items():
                            merged.setdefault(f, v)
                    rvo = _pairs(got[-1]) if kind == "consents" else {}
                    for f in sorted(merged):
                        rec = self._exported(kind, b, f, merged[f], rvo)
                        if rec is not None:
                            yield rec
                if i < len(layers) - 1:
                    done.update(todo)

    def _exported(self, kind: str, bucket: str, field: str, value: Any, rvo: dict[str, Any]) -> Record | None:
        if kind == "dnc":
            scope, at = dnc_decode(value)
            return DncEntry(number=bucket + field, scope=scope, registered_at=at)  # type: ignore[arg-type]
        if not value:
            return None  # a tombstone
        suffix, _, token = field.partition(":")
        d = unpack_consent(value)
        r = rvo.get(field)
        if r is not None and (d.get("rv") in ("", None) or int(r) < int(d["rv"])):
            d["rv"] = int(r)
        return Consent(
            token=token,
            callee=bucket + suffix,
            enterprise_id=d.get("ent", ""),
            purpose=d.get("pur") or "callback",
            granted_at=from_ms(d.get("gr")) or datetime.fromtimestamp(0, UTC),
            expires_at=from_ms(d.get("ex")),
            max_calls=int(d["max"]) if d.get("max") not in ("", None) else None,
            evidence_ref=d.get("ev", ""),
            revoked_at=from_ms(d.get("rv")),
        )

    async def dnc_add(self, entry: DncEntry) -> None:
        """Register one number in the top DNC layer (effective on the next INVITE)."""
        layers = await self._ensure_layer("dnc")
        n = _normalize(entry.number)
        bucket, suffix = split(n)
        await self._checked(
            [
                ("HSET", dnc_layer_key(bucket, layers[0]), suffix, dnc_value(entry.scope, entry.registered_at)),
                ("SADD", index_key("dnc", layers[0], index_shard(bucket)), bucket),
            ]
        )

    async def dnc_remove(self, number: str) -> bool:
        """Remove a number from every DNC layer (True when it was registered)."""
        n = _normalize(number)
        bucket, suffix = split(n)
        layers = (await self.refresh_layers()).get("dnc", ())
        res = await self._checked([("HDEL", dnc_layer_key(bucket, g), suffix) for g in layers])
        return any(int(r) for r in res)

    async def get_dnc(self, number: str) -> DncEntry | None:
        n = _normalize(number)
        bucket, suffix = split(n)
        layers = (await self.refresh_layers()).get("dnc", ())
        res = await self._checked([("HGET", dnc_layer_key(bucket, g), suffix) for g in layers])
        value = next((v for v in res if v is not None), None)
        if value is None:
            return None
        scope, at = dnc_decode(value)
        return DncEntry(number=n, scope=scope, registered_at=at)  # type: ignore[arg-type]

    async def set_status(
        self,
        kind: Literal["enterprise", "trunk"],
        ident: str,
        status: str,
        *,
        cause: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Suspend / resume one trunk or enterprise; False when it does not exist.

        Operator state of its own (``{cag:ref}:ops``), applied over the loaded
        record by ``load_refdata``: reloading the trunks or enterprises file
        does not lift a suspension, manual or automatic. ``active`` over a
        record loaded as active simply drops the operator entry. Checked in
        Lua (``cag_ref_op``) against the record's existence, atomically.
        """
        plural = "enterprises" if kind == "enterprise" else "trunks"
        model = KIND_MODELS[plural]
        key = ref_key(plural)
        (old,) = await self._read([("HGET", key, ident)])
        if old is None:
            return False
        data = msgpack.unpackb(old)
        op: dict[str, Any] = {"status": status}
        if kind == "enterprise" and status != "active":
            op["suspended_at"] = (at or datetime.now(UTC)).isoformat()
            op["suspended_cause"] = cause
        model.model_validate({**data, **op})  # raises ValueError on a bad status
        value = b"" if status == data.get("status", "active") == "active" else msgpack.packb(op)
        version = await self.fcall("cag_ref_op", (key, OPS, REF_VERSION), (ident, f"{kind}:{ident}", value))
        if int(version) < 0:
            return False
        await self._publish(int(version))
        return True


_OP_PREFIX = {"trunks": "trunk", "enterprises": "enterprise"}


def _with_op(model: type[Record], prefix: str, key: Any, raw: bytes, opmap: dict[str, Any]) -> Any:
    """A loaded record with its operator status applied (a blacklisting in the file always wins)."""
    data = msgpack.unpackb(raw)
    op = opmap.get(f"{prefix}:{_s(key)}")
    if op and data.get("status") != "blacklisted":
        data = {**data, "suspended_at": None, "suspended_cause": None, **op} if prefix == "enterprise" else {**data, **op}
    return model.model_validate(data)


def _pack(c: Consent) -> bytes:
    return pack_consent(
        c.enterprise_id, c.purpose, c.granted_at, c.expires_at, c.max_calls, c.evidence_ref, c.revoked_at
    )


def row_of(r: Record) -> Any:
    """A validated record as the row LayerWriter takes."""
    if isinstance(r, DncEntry):
        return (_normalize(r.number), dnc_value(r.scope, r.registered_at))
    if isinstance(r, Consent):
        return (r.token, _normalize(r.callee), _pack(r))
    raise TypeError(f"not a layered record: {type(r).__name__}")


class RefWriter:
    """A trunks / enterprises / filings load: all-or-nothing on the ``{cag:ref}`` slot.

    Up to ``REF_MULTI_MAX`` records: one MULTI/EXEC (what it always was).
    More: the rows go to a staging hash in bounded HSETs (an upsert first
    copies the live entries the file does not override, in HSCAN steps), then
    one MULTI renames staging over the live hash and bumps the version, and the
    replaced hash is UNLINKed (freed in the background). No single command
    touches more than a batch.
    """

    def __init__(self, store: PolicyStore, kind: str, *, replace: bool) -> None:
        self.store, self.kind, self.replace = store, kind, replace
        self.field = KIND_KEYS[kind]
        self.pending: dict[str, bytes] = {}
        self.staged = False
        self.staging = f"{ref_key(kind)}:staging"
        self.rows = 0

    async def begin(self) -> None:
        await self.store._call("UNLINK", self.staging)

    async def add(self, records: Sequence[Record]) -> None:
        for r in records:
            self.pending[getattr(r, self.field)] = msgpack.packb(r.model_dump(mode="json"))
        self.rows += len(records)
        if len(self.pending) > REF_MULTI_MAX or (self.staged and len(self.pending) >= BATCH_ROWS):
            await self._stage()

    async def _stage(self) -> None:
        items = list(self.pending.items())
        self.pending.clear()
        self.staged = True
        for i in range(0, len(items), BATCH_ROWS):
            chunk = items[i : i + BATCH_ROWS]
            await self.store._checked([("HSET", self.staging, *[x for kv in chunk for x in kv])])

    async def commit(self) -> int:
        store, live = self.store, ref_key(self.kind)
        try:
            if not self.staged:
                pipe = store.client.pipeline(transaction=True)
                if self.replace:
                    pipe.execute_command("UNLINK", live)  # freed in the background, however big
                if self.pending:
                    pipe.execute_command("HSET", live, *[x for kv in self.pending.items() for x in kv])
                pipe.execute_command("INCR", REF_VERSION)
                res = await pipe.execute()
                await store._publish(int(res[-1]))
                return int(res[-1])
            await self._stage()
            if not self.replace:
                cursor = 0
                while True:
                    cursor, items = await store.client.hscan(live, cursor, count=BATCH_ROWS)
                    if items:
                        flat = [x for kv in _pairs(items).items() for x in kv]
                        await store._checked([("FCALL", "cag_hsetnx", 1, self.staging, *flat)])
                    if not cursor:
                        break
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return await self._swap(live, f"{live}:old")

    async def _swap(self, live: str, old: str) -> int:
        store = self.store
        try:
            exists = int(await store.client.exists(live))
            pipe = store.client.pipeline(transaction=True)
            if exists:
                pipe.execute_command("RENAME", live, old)
            if int(await store.client.exists(self.staging)):
                pipe.execute_command("RENAME", self.staging, live)
            pipe.execute_command("INCR", REF_VERSION)
            res = await pipe.execute()
            await store.client.execute_command("UNLINK", old)  # freed in the background
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        await store._publish(int(res[-1]))
        return int(res[-1])


def _pairs(flat: Any) -> dict[str, Any]:
    if isinstance(flat, dict):
        return {_s(k): v for k, v in flat.items()}
    return {_s(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}
