"""Reference data in Redis: the snapshot, single reads, change notifications, whole-kind writes.

A mixin of ``policy.store.PolicyStore`` (the key layout is told there): what
the engine reads on a version change (``load_refdata``, ``ref_version``,
``subscribe_changes``), the operator's look-ups (``get_ref``, ``scan_ref``),
and ``RefWriter``, the all-or-nothing load of a trunks / enterprises /
filings file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, WatchError

from policy.bulk import BATCH_ROWS
from policy.layout import GEN_POINTER, OPS, parse_layers
from policy.model import KIND_KEYS, KIND_MODELS, Enterprise, NumberFiling, Record, Trunk
from policy.numbers import national_key
from policy.rules.filing_table import filing_key
from policy.store_keys import (
    CHANNEL,
    FILINGS_DELTA_MAX,
    FILINGS_FULL,
    FILINGS_LENS,
    FILINGS_LOG,
    FILINGS_LOG_KEEP,
    FILINGS_VERSION,
    LAYERS_CHANGED,
    REF_MULTI_MAX,
    REF_VERSION,
    StoreError,
    _pairs,
    _s,
    ref_key,
)

if TYPE_CHECKING:
    from policy.store import PolicyStore

log = logging.getLogger("policy.store")


class RefDataMixin:
    """Reference data and change notifications (mixed into ``PolicyStore``)."""

    client: aioredis.Redis | RedisCluster
    # Consent/DNC layer pointers ({cag:ref}:gen), refreshed by ref_version/load_refdata.
    _gens: dict[str, tuple[int, ...]] | None

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
        trunks or enterprises file does not lift a suspension. Reads every
        filing: workers use ``load_ref_small`` and the filings deltas instead.
        """
        trunks, ents, (version, _), filings = await self._read_ref(with_filings=True)
        return (
            trunks,
            ents,
            [NumberFiling.model_validate(msgpack.unpackb(v)) for v in filings.values()],
            version,
        )

    async def ref_versions(self) -> tuple[int, int]:
        """(reference version, filings version) in one command; refreshes the layer pointers too.

        ``REF_VERSION - FILINGS_VERSION`` moves only when trunks, enterprises
        or operator statuses change (policy/store_keys.py).
        """
        try:
            # MULTI: the two counters from one moment (redis-py refuses MGET in a cluster
            # pipeline; all three keys are in the {cag:ref} slot).
            pipe = self.client.pipeline(transaction=True)
            pipe.get(REF_VERSION)
            pipe.get(FILINGS_VERSION)
            pipe.hgetall(GEN_POINTER)
            v, fv, gens = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        self._set_layers(gens)
        return int(v or 0), int(fv or 0)

    async def load_ref_small(self) -> tuple[list[Trunk], list[Enterprise], int, int]:
        """Trunks and enterprises (operator status applied) with both versions: one MULTI/EXEC.

        What a worker reloads when the reference version moves but the
        filings version does not (a suspension, a trunks file): small kinds,
        never the filings.
        """
        trunks, ents, (version, fver), _ = await self._read_ref(with_filings=False)
        return trunks, ents, version, fver

    async def _read_ref(
        self, *, with_filings: bool
    ) -> tuple[list[Trunk], list[Enterprise], tuple[int, int], dict[Any, bytes]]:
        """One MULTI/EXEC: trunks, enterprises (operator status applied), both versions, [filings]."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(ref_key("trunks"))
            pipe.hgetall(ref_key("enterprises"))
            pipe.get(REF_VERSION)
            pipe.get(FILINGS_VERSION)
            pipe.hgetall(OPS)
            pipe.hgetall(GEN_POINTER)
            if with_filings:
                pipe.hgetall(ref_key("filings"))
            trunks, ents, v, fv, ops, gens, *filings = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        self._set_layers(gens)
        opmap = {_s(k): msgpack.unpackb(v) for k, v in (ops or {}).items()}
        return (
            [_with_op(Trunk, "trunk", k, v, opmap) for k, v in trunks.items()],  # type: ignore[misc]
            [_with_op(Enterprise, "enterprise", k, v, opmap) for k, v in ents.items()],  # type: ignore[misc]
            (int(v or 0), int(fv or 0)),
            filings[0] if filings else {},
        )

    async def filing_changes(self, since: int, upto: int) -> list[str] | None:
        """The numbers filings writes ``since`` < version <= ``upto`` changed; None: read them all again.

        None when one of those versions rewrote the kind, or is no longer in
        the log (a worker more than ``FILINGS_LOG_KEEP`` versions behind).
        """
        if upto <= since:
            return []
        if since < 0 or upto - since > FILINGS_LOG_KEEP:
            return None
        try:
            entries = await self.client.hmget(FILINGS_LOG, [str(v) for v in range(since + 1, upto + 1)])
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        numbers: list[str] = []
        for raw in entries:
            if raw is None or raw == FILINGS_FULL:
                return None
            numbers.extend(_s(n) for n in msgpack.unpackb(raw))
        return numbers

    async def filing_records(self, numbers: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """The stored filings of these numbers (None: not filed), read in bounded HMGETs."""
        out: dict[str, dict[str, Any] | None] = {}
        uniq = list(dict.fromkeys(numbers))
        key = ref_key("filings")
        try:
            for i in range(0, len(uniq), BATCH_ROWS):
                chunk = uniq[i : i + BATCH_ROWS]
                for n, raw in zip(chunk, await self.client.hmget(key, chunk), strict=True):
                    out[n] = msgpack.unpackb(raw) if raw is not None else None
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return out

    async def scan_filing_records(self, count: int = BATCH_ROWS) -> AsyncIterator[list[dict[str, Any]]]:
        """Every stored filing as its msgpack map, in batches of bounded HSCAN steps.

        A filing may come twice (HSCAN's guarantee is "at least once" for
        what stays in the hash); the table builder keeps one.
        """
        cursor = 0
        key = ref_key("filings")
        while True:
            try:
                cursor, items = await self.client.hscan(key, cursor, count=count)
            except (RedisError, OSError) as e:
                raise StoreError(f"redis: {e}") from e
            pairs = _pairs(items)
            for i in range(0, len(pairs), count):  # decoded in pieces: COUNT is only a hint
                yield [msgpack.unpackb(v) for v in list(pairs.values())[i : i + count]]
            if not cursor:
                return

    async def filings_extending(self, key: str, max_candidates: int = 4000) -> list[str]:
        """The filed numbers whose national key is ``key`` with digits appended (R4 for ``cag explain``).

        The loader keeps the lengths of the filed national keys
        (``FILINGS_LENS``), so the numbers that can extend ``key`` are
        enumerated and looked up in bounded HMGETs: a caller one or two
        digits short of filed numbers costs one round trip. When that would
        be more than ``max_candidates`` numbers (a caller many digits short),
        or the lengths were never written (filings loaded before them), the
        hash is scanned on the server (HSCAN MATCH), which reads the whole
        kind there (about a second per million filings).
        """
        try:
            lens = await self.client.hgetall(FILINGS_LENS)
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        forms = [""] if key.startswith("+") else ["+86", ""]
        longer = sorted(n for n in (int(_s(k)) for k in (lens or {})) if n > len(key))
        if lens and sum(10 ** (n - len(key)) for n in longer) * len(forms) <= max_candidates:
            cands = [
                f + key + str(s).zfill(n - len(key)) for n in longer for s in range(10 ** (n - len(key))) for f in forms
            ]
            return [k for k, v in (await self.filing_records(cands)).items() if v is not None]
        found: list[str] = []
        for f in forms:
            found += await self._scan_prefix(f + key)
        return found

    async def _scan_prefix(self, prefix: str, count: int = 20000) -> list[str]:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "?*"
        found: list[str] = []
        cursor = 0
        try:
            while True:
                cursor, items = await self.client.hscan(ref_key("filings"), cursor, match=pattern, count=count)
                found.extend(_pairs(items))
                if not cursor:
                    return found
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e

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


_OP_PREFIX = {"trunks": "trunk", "enterprises": "enterprise"}


def _with_op(model: type[Record], prefix: str, key: Any, raw: bytes, opmap: dict[str, Any]) -> Any:
    """A loaded record with its operator status applied (a blacklisting in the file always wins)."""
    data = msgpack.unpackb(raw)
    op = opmap.get(f"{prefix}:{_s(key)}")
    if op and data.get("status") != "blacklisted":
        data = {**data, "suspended_at": None, "suspended_cause": None, **op} if prefix == "enterprise" else {**data, **op}
    return model.model_validate(data)


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
        # Filings: the numbers this load changes, logged so workers apply them as a
        # delta; None once it is a rewrite (--replace, or over FILINGS_DELTA_MAX rows).
        self.changed: dict[str, None] | None = {} if kind == "filings" and not replace else None
        self.lens: dict[int, int] = {}  # filings: national-key length -> rows (FILINGS_LENS)

    async def begin(self) -> None:
        await self.store._call("UNLINK", self.staging)

    async def add(self, records: Sequence[Record]) -> None:
        for r in records:
            key = getattr(r, self.field)
            if self.kind == "filings":  # the field is what workers and `policy show` look up
                key = filing_key(key)
                n = len(national_key(key))
                self.lens[n] = self.lens.get(n, 0) + 1
            self.pending[key] = msgpack.packb(r.model_dump(mode="json"))
            if self.changed is not None:
                self.changed[key] = None
        if self.changed is not None and len(self.changed) > FILINGS_DELTA_MAX:
            self.changed = None
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
                commands: list[tuple[Any, ...]] = []
                if self.replace:
                    commands.append(("UNLINK", live))  # freed in the background, however big
                if self.pending:
                    commands.append(("HSET", live, *[x for kv in self.pending.items() for x in kv]))
                version = await self._transact(commands)
                await store._publish(version)
                return version
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
            commands: list[tuple[Any, ...]] = []
            if int(await store.client.exists(live)):
                commands.append(("RENAME", live, old))
            if int(await store.client.exists(self.staging)):
                commands.append(("RENAME", self.staging, live))
            version = await self._transact(commands)
            await store.client.execute_command("UNLINK", old)  # freed in the background
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        await store._publish(version)
        return version

    async def _transact(self, commands: list[tuple[Any, ...]]) -> int:
        """``commands`` and the version bump in one MULTI/EXEC; returns the new reference version.

        Filings also bump ``FILINGS_VERSION`` and log what changed under it
        (the numbers, or ``FILINGS_FULL``); the next version number is read
        under WATCH, so two writers never log under the same one.
        """
        client = self.store.client
        if self.kind != "filings":
            pipe = client.pipeline(transaction=True)
            for c in commands:
                pipe.execute_command(*c)
            pipe.execute_command("INCR", REF_VERSION)
            return int((await pipe.execute())[-1])
        entry = FILINGS_FULL if self.changed is None else msgpack.packb(list(self.changed))
        for _ in range(50):
            async with client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(FILINGS_VERSION)
                    fv = int(await pipe.get(FILINGS_VERSION) or 0) + 1
                    pipe.multi()
                    for c in commands:
                        pipe.execute_command(*c)
                    pipe.execute_command("SET", FILINGS_VERSION, fv)
                    pipe.execute_command("HSET", FILINGS_LOG, fv, entry)
                    pipe.execute_command("HDEL", FILINGS_LOG, fv - FILINGS_LOG_KEEP)
                    if self.replace:
                        pipe.execute_command("DEL", FILINGS_LENS)
                    for n, rows in self.lens.items():
                        pipe.execute_command("HINCRBY", FILINGS_LENS, n, rows)
                    pipe.execute_command("INCR", REF_VERSION)
                    return int((await pipe.execute())[-1])
                except WatchError:
                    continue
        raise StoreError("redis: filings version kept moving (50 concurrent writers?)")
