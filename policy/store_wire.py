"""The store's wire: Cluster routing of FCALL, hiredis packing, and the batcher of one event-loop turn.

``policy.store.PolicyStore`` sends every hot-path call through ``_Batcher``
(one pipeline per loop turn) over connections whose commands hiredis packs
in C; on Cluster, ``_Cluster`` routes an FCALL by its first key without a
round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

from policy.store_keys import StoreError

if TYPE_CHECKING:
    from policy.store import PolicyStore

_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis = None

log = logging.getLogger("policy.store")


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
            # Hot link (issue 13, policy.hotlink): written now, answered from its data_received.
            hot = self._store._hotlink
            if (
                hot is not None
                and self._store._functions_ok
                and hot.send_now([e[0] for e in batch], lambda r: self._hot_replies(batch, r))
            ):
                return
            self._spawn(batch)

    def _spawn(self, batch: list[_Entry]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hot_replies(self, batch: list[_Entry], results: list[Any] | Exception) -> None:
        """The hot link's answer to a batch: resolve it, as ``_run`` does after its pipeline."""
        if isinstance(results, Exception):
            self._fail(batch, StoreError(f"redis: {results}"))
            return
        retry = [i for i, r in enumerate(results) if _function_missing(r)]
        if retry:  # library missing: ``_run`` loads it and sends these again
            self._spawn([batch[i] for i in retry])
            done = set(retry)
            self._resolve(
                [e for i, e in enumerate(batch) if i not in done],
                [r for i, r in enumerate(results) if i not in done],
            )
            return
        self._resolve(batch, results)

    @staticmethod
    def _fail(batch: list[_Entry], err: StoreError) -> None:
        for _, _, fut in batch:
            if not fut.done():
                fut.set_exception(err)

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
            self._fail(batch, e if isinstance(e, StoreError) else StoreError(f"redis: {e}"))
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
        self._resolve(batch, results)

    @staticmethod
    def _resolve(batch: list[_Entry], results: list[Any]) -> None:
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
