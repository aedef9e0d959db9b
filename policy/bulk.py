"""Consent / DNC loads as new generations, switched atomically; old generations deleted in steps.

Why generations: on Redis Cluster the data of a kind spans every slot, so no
MULTI can make a file load all-or-nothing, and one giant MULTI on a single
server blocks every call for seconds. Instead a load writes its rows under a
fresh generation id (invisible: no worker reads it yet) in bounded
pipelines, and its commit is one command on one key (``cag_gen_switch`` on
``{cag:ref}:gen``). A load that fails half-way — a bad row, Redis gone, the
loader killed — has switched nothing; its partial generation is queued for
deletion. See policy/layout.py for the keys.

Modes:

* ``--replace``: the new generation is the kind's only layer; the old layers
  are retired.
* upsert: the new generation becomes an overlay above the base; an older
  overlay is merged into it (the file's rows win) and retired. Lookups read
  the overlay, then the base, so an upsert of 10 rows onto 100M costs 10 rows,
  not a copy of the base. A token the file moves to another callee leaves a
  tombstone at its old callee in the overlay.

Retired generations are deleted after a grace period (workers re-read the
layer pointer within their refresh interval, 0.5 s by default) with UNLINK in
bounded pipelines: never one command over a few hundred keys.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from policy import layout
from policy.layout import (
    GC_QUEUE,
    GEN_POINTER,
    GEN_SEQ,
    INDEX_SHARDS,
    TOKEN_SHARDS,
    consent_layer_key,
    dnc_layer_key,
    format_layers,
    index_key,
    index_shard,
    split,
    token_layer_key,
    token_shard,
)

if TYPE_CHECKING:
    from policy.store import PolicyStore

GC_GRACE_S = 5.0  # s a retired generation stays readable (workers refresh every 0.5 s)
PENDING_TTL_S = 86400  # s after which a dead loader's unfinished generation is deleted
BATCH_ROWS = 2000  # rows per pipeline: a few hundred KiB, ~1-2 ms of Redis work
MAX_INFLIGHT = 4  # pipelines in flight: enough to keep Redis busy while the file is parsed
DEL_BATCH = 500  # keys per UNLINK pipeline
MAX_SUSPECTS = 10_000  # duplicate candidates kept for the report (bounded memory)

REF_VERSION = "{cag:ref}:version"

# (number, value) for DNC; (token, callee, packed consent) for consents.
DncRow = tuple[str, int]
ConsentRow = tuple[str, str, bytes]


class SwitchConflict(Exception):
    """Another load switched the same kind while this one was writing; nothing of this one is visible."""


@dataclass
class LayerWriter:
    """One load of ``kind`` into a new generation: ``begin``, ``add``… , ``finish``, then ``commit`` or ``abort``."""

    store: PolicyStore
    kind: str  # "dnc" or "consents"
    replace: bool
    max_inflight: int = MAX_INFLIGHT
    gen: int = 0
    old: tuple[int, ...] = ()
    new: tuple[int, ...] = ()
    retire: tuple[int, ...] = ()
    rows: int = 0
    suspects: set[str] = field(default_factory=set)  # numbers / tokens possibly duplicated
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _sem: asyncio.Semaphore | None = None
    _error: BaseException | None = None

    async def begin(self) -> None:
        if self.kind not in layout.LAYERED_KINDS:
            raise ValueError(f"{self.kind}: not a layered kind")
        self.old = (await self.store.refresh_layers()).get(self.kind, ())
        self.gen = int(await self.store._call("INCR", GEN_SEQ))
        # Pending until the switch removes this entry: a loader killed half-way leaves a queued delete.
        await self.store._call("ZADD", GC_QUEUE, time.time() + PENDING_TTL_S, f"{self.kind}:{self.gen}")
        if self.replace or not self.old:
            self.new, self.retire = (self.gen,), self.old
        else:
            self.new, self.retire = (self.gen, self.old[-1]), self.old[:-1]
        self._sem = asyncio.Semaphore(self.max_inflight)

    # ------------------------------------------------------------------ rows
    async def add(self, rows: Sequence[Any]) -> None:
        """Queue one batch; returns once fewer than ``max_inflight`` pipelines are outstanding."""
        if self._error is not None:
            raise self._error
        if not rows:
            return
        assert self._sem is not None
        self.rows += len(rows)
        if self.kind == "dnc":
            cmds, expect = self._dnc_commands(rows)
        else:
            cmds, expect = await self._consent_commands(rows)
        await self._sem.acquire()
        task = asyncio.get_running_loop().create_task(self._send(cmds, expect))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, cmds: list[tuple[Any, ...]], expect: dict[int, list[str]]) -> None:
        assert self._sem is not None
        try:
            results = await self.store.bulk_pipeline(cmds)
            for i, r in enumerate(results):
                if isinstance(r, Exception):
                    raise layout_error(r)
                names = expect.get(i)
                if names is not None and int(r) < len(names):  # a field already written: a duplicate
                    self._suspect(names)
        except BaseException as e:
            if self._error is None:
                self._error = e
        finally:
            self._sem.release()

    def _suspect(self, names: list[str]) -> None:
        for n in names:
            if len(self.suspects) >= MAX_SUSPECTS:
                return
            self.suspects.add(n)

    def _dnc_commands(self, rows: Sequence[DncRow]) -> tuple[list[tuple[Any, ...]], dict[int, list[str]]]:
        buckets: dict[str, dict[str, int]] = {}
        names: dict[str, list[str]] = {}
        cut = -layout.SUFFIX_DIGITS
        for number, value in rows:
            b, s = (number[:cut], number[cut:]) if len(number) > layout.SUFFIX_DIGITS + 2 else split(number)
            fields = buckets.get(b)
            if fields is None:
                fields = buckets[b] = {}
                names[b] = []
            elif s in fields:
                self._suspect([number])
            fields[s] = value
            names[b].append(number)
        cmds: list[tuple[Any, ...]] = []
        expect: dict[int, list[str]] = {}
        for b, fields in buckets.items():
            expect[len(cmds)] = names[b]
            cmds.append(("HSET", dnc_layer_key(b, self.gen), *[x for kv in fields.items() for x in kv]))
        cmds += self._index_commands(buckets)
        return cmds, expect

    def _index_commands(self, buckets: Any) -> list[tuple[Any, ...]]:
        shards: dict[int, list[str]] = {}
        for b in buckets:
            shards.setdefault(index_shard(b), []).append(b)
        return [("SADD", index_key(self.kind, self.gen, sh), *bs) for sh, bs in shards.items()]

    async def _consent_commands(
        self, rows: Sequence[ConsentRow]
    ) -> tuple[list[tuple[Any, ...]], dict[int, list[str]]]:
        buckets: dict[str, dict[str, bytes]] = {}
        shards: dict[int, dict[str, str]] = {}
        crc = zlib.crc32
        cut = -layout.SUFFIX_DIGITS
        for token, callee, packed in rows:
            shard = crc(token.encode()) % TOKEN_SHARDS
            sh = shards.get(shard)
            if sh is None:
                sh = shards[shard] = {}
            elif token in sh:
                self._suspect([token])
            sh[token] = callee
            if len(callee) > layout.SUFFIX_DIGITS + 2:
                b, field = callee[:cut], f"{callee[cut:]}:{token}"
            else:
                b, field = callee, f":{token}"
            fields = buckets.get(b)
            if fields is None:
                fields = buckets[b] = {}
            fields[field] = packed
        if len(self.new) > 1:
            await self._tombstones(rows, buckets)
        cmds: list[tuple[Any, ...]] = []
        expect: dict[int, list[str]] = {}
        for shard, tokens in shards.items():
            expect[len(cmds)] = list(tokens)
            cmds.append(("HSET", token_layer_key(shard, self.gen), *[x for kv in tokens.items() for x in kv]))
        for b, fields in buckets.items():
            cmds.append(("HSET", consent_layer_key(b, self.gen), *[x for kv in fields.items() for x in kv]))
        cmds += self._index_commands(buckets)
        return cmds, expect

    async def _tombstones(self, rows: Sequence[ConsentRow], buckets: dict[str, dict[str, bytes]]) -> None:
        """Upsert: a token now granted for another callee must not still be found at the old one."""
        lower = self.old  # the old overlay (merged later) and the base
        cmds = []
        for token, _, _ in rows:
            keys = [token_layer_key(token_shard(token), g) for g in lower]
            cmds.append(("FCALL_RO", "cag_token", len(keys), *keys, token))
        owners = await self.store.bulk_pipeline(cmds)
        for (token, callee, _), owner in zip(rows, owners, strict=True):
            if isinstance(owner, Exception):
                raise layout_error(owner)
            if owner is None:
                continue
            prev = owner.decode() if isinstance(owner, bytes) else str(owner)
            if prev and prev != callee:
                b, _ = split(prev)
                buckets.setdefault(b, {}).setdefault(layout.consent_field(prev, token), b"")

    async def finish(self) -> None:
        """Wait for every pipeline; merge the retired overlay (upsert). Raises what a pipeline raised."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._error is not None:
            raise self._error
        if len(self.new) > 1 and self.retire:
            for ov in self.retire:
                await self._merge(ov)

    async def _merge(self, ov: int) -> None:
        layer = dnc_layer_key if self.kind == "dnc" else consent_layer_key
        async for batch in bucket_batches(self.store, self.kind, ov):
            cmds: list[tuple[Any, ...]] = [("FCALL", "cag_merge", 2, layer(b, ov), layer(b, self.gen)) for b in batch]
            cmds += self._index_commands(batch)
            await self.store._checked(cmds)
        if self.kind == "consents":
            for start in range(0, TOKEN_SHARDS, DEL_BATCH):
                await self.store._checked(
                    [
                        ("FCALL", "cag_merge", 2, token_layer_key(sh, ov), token_layer_key(sh, self.gen))
                        for sh in range(start, min(start + DEL_BATCH, TOKEN_SHARDS))
                    ]
                )

    async def commit(self, grace_s: float = GC_GRACE_S) -> int:
        """The switch: one script on one key. Returns the reference version (unchanged).

        Workers re-read the layer pointer on the ``layers`` message that
        follows (and with every version poll, 0.5 s, should they miss it),
        well inside ``grace_s``.
        """
        version = await self.store.fcall(
            "cag_gen_switch",
            (GEN_POINTER, GC_QUEUE, REF_VERSION),
            (self.kind, format_layers(self.old), format_layers(self.new), time.time() + grace_s, *self.retire),
        )
        if int(version) < 0:
            await self.abort()
            raise SwitchConflict(
                f"another {self.kind} load or change switched the data while this one was written; "
                "nothing of this file is visible: run the load again"
            )
        await self.store.refresh_layers()
        await self.store.publish_layers()
        return int(version)

    async def abort(self) -> None:
        """Nothing was switched; queue the partial generation for deletion now."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        try:
            await self.store._call("ZADD", GC_QUEUE, time.time(), f"{self.kind}:{self.gen}")
        except Exception:
            pass


def layout_error(e: BaseException) -> Exception:
    from policy.store import StoreError

    return StoreError(f"redis: {e}")


async def bucket_batches(store: PolicyStore, kind: str, gen: int, count: int = DEL_BATCH) -> Any:
    """The buckets a generation wrote, in batches (SSCAN of its index shards)."""
    for shard in range(INDEX_SHARDS):
        key = index_key(kind, gen, shard)
        cursor: int = 0
        while True:
            cursor, members = await store._call_raw("SSCAN", key, cursor, "COUNT", count)
            cursor = int(cursor)
            batch = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            if batch:
                yield batch
            if not cursor:
                break


async def collect_garbage(
    store: PolicyStore, *, now: float | None = None, progress: Callable[[int], None] | None = None
) -> int:
    """Delete every queued generation that is due (UNLINK in bounded pipelines). Returns keys deleted."""
    due = await store._call("ZRANGEBYSCORE", GC_QUEUE, "-inf", now if now is not None else time.time())
    deleted = 0
    for entry in due or ():
        name = entry.decode() if isinstance(entry, bytes) else str(entry)
        kind, _, g = name.partition(":")
        gen = int(g)
        layer = dnc_layer_key if kind == "dnc" else consent_layer_key
        async for batch in bucket_batches(store, kind, gen):
            await store._checked([("UNLINK", layer(b, gen)) for b in batch])
            deleted += len(batch)
            if progress is not None:
                progress(deleted)
        await store._checked([("UNLINK", index_key(kind, gen, sh)) for sh in range(INDEX_SHARDS)])
        if kind == "consents":
            for start in range(0, TOKEN_SHARDS, DEL_BATCH):
                await store._checked(
                    [("UNLINK", token_layer_key(sh, gen)) for sh in range(start, min(start + DEL_BATCH, TOKEN_SHARDS))]
                )
        await store._call("ZREM", GC_QUEUE, name)
    return deleted
