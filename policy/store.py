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
``{cag:ref}:filings:version`` / ``{cag:ref}:filings:log``
    filings writes counted apart, and per version the numbers changed (or
    ``*``: rewritten), so a worker applies a filings change as a delta and a
    trunk or operator change reloads only trunks and enterprises
    (policy/store_keys.py, policy/refcache.py).
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

Reference data and its change notifications are in policy/store_refdata.py,
the operator's writes in policy/store_writes.py, the keys and result types
in policy/store_keys.py, the wire (Cluster routing, hiredis packing, the
batcher) in policy/store_wire.py. This module keeps connecting, both
pipelines and the hot-path calls in one class, because the hot path's cost
is exactly how they meet.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError, ResponseError

from policy.hotlink import HotLink, LinkTarget
from policy.layout import (
    consent_field,
    consent_layer_key,
    dnc_layer_key,
    revoked_key,
    split,
    token_layer_key,
    token_shard,
    used_key,
)
from policy.redact import redact_url
from policy.redis_client import async_client
from policy.rules.purpose import normalize_purpose
from policy.store_keys import (
    CHANNEL,
    DAY_TTL_SLACK,
    LAYERS_CHANGED,
    LIBRARY,
    REF_KINDS,
    REF_MULTI_MAX,
    REF_VERSION,
    SOCKET_TIMEOUT,
    TXN_TTL,
    CalleeResult,
    RateResult,
    StoreError,
    _opt,
    _pairs,
    _s,
    callee_txn_key,
    conc_key,
    day_key,
    rate_key,
    ref_key,
    total_day_key,
    txn_key,
    unconsented_key,
)
from policy.store_refdata import RefDataMixin, RefWriter
from policy.store_wire import _Batcher, _Cluster, _hiredis, _hiredis_packer
from policy.store_writes import WritesMixin, row_of

# Imported from here by the rest of the project: the store's public names stay in one place.
__all__ = [
    "CHANNEL",
    "DAY_TTL_SLACK",
    "LAYERS_CHANGED",
    "LIBRARY",
    "REF_KINDS",
    "REF_MULTI_MAX",
    "REF_VERSION",
    "SOCKET_TIMEOUT",
    "TXN_TTL",
    "CalleeResult",
    "PolicyStore",
    "RateResult",
    "RefWriter",
    "StoreError",
    "callee_txn_key",
    "conc_key",
    "day_key",
    "rate_key",
    "ref_key",
    "row_of",
    "total_day_key",
    "txn_key",
    "unconsented_key",
]

log = logging.getLogger(__name__)


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


@lru_cache(maxsize=1024)
def _purposes_arg(purposes: tuple[str, ...]) -> str:
    """An enterprise's purposes as ``cag_admit`` takes them: normalised, space-separated."""
    return " ".join(p for p in map(normalize_purpose, purposes) if p)


def _load_library() -> str:
    return resources.files("policy").joinpath("lua/cag.lua").read_text()


class PolicyStore(WritesMixin, RefDataMixin):
    """Reference data, consents, DNC and counters in Redis or Redis Cluster.

    This module: the connection, the pipelines and the hot-path calls;
    ``RefDataMixin`` (policy/store_refdata.py) reads reference data and follows
    its changes; ``WritesMixin`` (policy/store_writes.py) holds the operator's
    loads and one-off changes.
    """

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
