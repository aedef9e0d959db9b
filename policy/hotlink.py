"""The hot path's own Redis connection: hiredis's reader on an asyncio Protocol (issue 13).

Why not redis-py here: its pipeline read is a coroutine, an
``asyncio.timeout`` and a health-check per reply, and the pool hand-out per
batch; profiled at 32 decisions per loop turn that was about a fifth of the
engine's client CPU. Here a loop turn's commands go out in one
``transport.write``; the replies are parsed by ``hiredis.Reader`` straight
from ``data_received`` and the batch's future is resolved when its last
reply is in — no task, no timeout object per reply.

Scope: a single server (redis://, rediss://, unix://; AUTH and SELECT from
the URL). Redis Cluster keeps redis-py's cluster pipeline (routing,
MOVED/ASK, failover), and everything off the hot path keeps redis-py.

Failure semantics match the pooled path it replaces in ``PolicyStore``:
replies that are Redis errors come back as ``ResponseError`` objects in the
list; a lost connection, a protocol error or no reply within
``reply_timeout`` fails every batch in flight with ``ConnectionError`` (the
replies may be half read, so the connection is never reused) and the next
batch connects afresh.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError, ResponseError

__all__ = ["HotLink", "LinkTarget"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkTarget:
    """Where and how to connect, from a redis URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # unix socket
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    tls_verify: bool = True
    tls_ca: str | None = None

    @classmethod
    def from_url(cls, url: str) -> LinkTarget | None:
        """The target, or None for a URL this link does not handle (the caller keeps redis-py)."""
        u = urlparse(url)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        known = {"db", "password", "username", "ssl_cert_reqs", "ssl_ca_certs"}
        if set(q) - known:
            return None  # options this link would silently ignore: not ours
        db = int(q.get("db", "0"))
        user = unquote(u.username) if u.username else q.get("username")
        pw = unquote(u.password) if u.password else q.get("password")
        if u.scheme == "unix":
            return cls(path=u.path, username=user or None, password=pw or None, db=db)
        if u.scheme not in ("redis", "rediss"):
            return None
        if u.path and u.path.strip("/"):
            db = int(u.path.strip("/"))
        return cls(
            host=u.hostname or "localhost",
            port=u.port or 6379,
            username=user or None,
            password=pw or None,
            db=db,
            tls=u.scheme == "rediss",
            tls_verify=q.get("ssl_cert_reqs", "required") != "none",
            tls_ca=q.get("ssl_ca_certs"),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if not self.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class _Batch:
    """One pipeline in flight: its replies so far, and who gets them (a future or a callback)."""

    __slots__ = ("cb", "fut", "n", "out")

    def __init__(
        self,
        n: int,
        fut: asyncio.Future[list[Any]] | None,
        cb: Callable[[list[Any] | ConnectionError], None] | None = None,
    ) -> None:
        self.n = n
        self.out: list[Any] = []
        self.fut = fut
        self.cb = cb

    def done(self, result: list[Any] | ConnectionError) -> None:
        if self.cb is not None:
            try:
                self.cb(result)
            except Exception:  # the receiver's bug must not stop the replies of the next batches
                log.exception("hot link: reply callback failed")
            return
        fut = self.fut
        if fut is None or fut.done():
            return
        if isinstance(result, ConnectionError):
            fut.set_exception(result)
        else:
            fut.set_result(result)


class _Protocol(asyncio.Protocol):
    def __init__(self, link: HotLink) -> None:
        self._link = link

    def data_received(self, data: bytes) -> None:
        self._link._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(self, ConnectionError(f"redis connection lost: {exc or 'closed'}"))


class HotLink:
    """One connection, one write per batch, replies matched to batches in order."""

    def __init__(
        self, target: LinkTarget, *, connect_timeout: float = 1.0, reply_timeout: float = 5.0
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: collections.deque[_Batch] = collections.deque()
        self._connecting: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._replies = 0  # replies read so far: progress for the stuck check
        self._closed = False

    async def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write; one reply (or ``ResponseError``) per command."""
        if self._transport is None or self._connecting is not None:
            await self._connect()  # or wait for the one under way: AUTH/SELECT go first
        assert self._transport is not None
        packed = b"".join([hiredis.pack_command(c) for c in commands])
        return await self._send(packed, len(commands))

    def send_now(
        self,
        commands: Sequence[tuple[Any, ...]],
        on_replies: Callable[[list[Any] | ConnectionError], None],
    ) -> bool:
        """Write ``commands`` now if the link is up; ``on_replies`` gets the replies (or the error).

        False, and nothing sent, when there is no connection yet (or one is
        being made): the caller takes ``pipeline``, which connects. This is
        the hot path's way in (issue 13): no coroutine, task or future per
        batch, and the replies are handed over from ``data_received`` itself
        instead of a task wake-up one loop iteration later.
        """
        if self._transport is None or self._connecting is not None:
            return False
        packed = b"".join([hiredis.pack_command(c) for c in commands])
        self._queue(_Batch(len(commands), None, on_replies), packed)
        return True

    def _send(self, packed: bytes, n: int) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue(_Batch(n, fut), packed)
        return fut

    def _queue(self, batch: _Batch, packed: bytes) -> None:
        assert self._transport is not None
        self._waiting.append(batch)
        self._transport.write(packed)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.reply_timeout, self._check_stuck, self._replies
            )

    # ------------------------------------------------------------ replies
    def _feed(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while True:
                r = reader.gets()
                if r is False:
                    break
                if not waiting:
                    raise hiredis.ProtocolError("reply without a request")
                self._replies += 1
                head = waiting[0]
                head.out.append(r)
                if len(head.out) == head.n:
                    waiting.popleft()
                    head.done(head.out)
        except hiredis.ProtocolError as e:
            self._drop(ConnectionError(f"redis protocol error: {e}"))

    def _check_stuck(self, replies_then: int) -> None:
        """Batches waiting and not one reply for ``reply_timeout``: the server hangs; give up.

        One timer per connection, re-armed while batches wait, instead of a
        timeout per batch or per reply.
        """
        self._timer = None
        if not self._waiting:
            return
        if self._replies == replies_then:
            self._drop(ConnectionError(f"no reply from redis within {self.reply_timeout} s"))
            return
        self._timer = asyncio.get_running_loop().call_later(
            self.reply_timeout, self._check_stuck, self._replies
        )

    # ------------------------------------------------------- connections
    async def _connect(self) -> None:
        if self._closed:
            raise ConnectionError("hot link closed")
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
            return
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            await asyncio.wait_for(self._open(), self.connect_timeout)
            self._connecting.set_result(None)
        except BaseException as e:
            err = e if isinstance(e, ConnectionError) else ConnectionError(f"redis connect: {e!r}")
            self._connecting.set_exception(err)
            self._connecting.exception()  # retrieved: the waiters get it from here
            self._drop(err)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise err from e
        finally:
            self._connecting = None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        t = self.target
        proto = _Protocol(self)
        transport: asyncio.BaseTransport
        if t.path is not None:
            transport, _ = await loop.create_unix_connection(lambda: proto, t.path)
        else:
            transport, _ = await loop.create_connection(
                lambda: proto, t.host, t.port, ssl=t.ssl_context()
            )
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here.
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._transport, self._protocol = cast(asyncio.Transport, transport), proto
        hello: list[tuple[Any, ...]] = []
        if t.password is not None:
            hello.append(("AUTH", t.username, t.password) if t.username else ("AUTH", t.password))
        if t.db:
            hello.append(("SELECT", t.db))
        if hello:
            replies = await self._send(b"".join(hiredis.pack_command(c) for c in hello), len(hello))
            for r in replies:
                if isinstance(r, ResponseError):
                    raise ConnectionError(f"redis refused the connection set-up: {r}")

    def _lost(self, proto: _Protocol, err: ConnectionError) -> None:
        if proto is self._protocol:
            self._drop(err)

    def _drop(self, err: ConnectionError) -> None:
        """Fail every batch in flight and forget the connection (never reused half read)."""
        transport, self._transport, self._protocol = self._transport, None, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, collections.deque()
        for b in waiting:
            b.done(err)
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        self._closed = True
        self._drop(ConnectionError("hot link closed"))
