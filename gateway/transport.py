"""asyncio protocols that only move bytes between sockets and the proxy core.

Like aioquic's asyncio adapter: a datagram or a framed TCP message goes to
``sink`` with its source and the loop time; nothing here parses SIP beyond
TCP framing, which must happen before a message exists at all.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import itertools
import logging
import socket
import struct
import sys
import termios
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from gateway.sip import Ping, SipError, StreamFramer

log = logging.getLogger("cag.transport")

Addr = tuple[str, int]
# sink(data, source, transport, conn_id, private)
Sink = Callable[[bytes, Addr, str, "int | None", bool], None]

_conn_ids = itertools.count(1)


@dataclass
class TcpLimits:
    """Limits on accepted TCP connections, shared by one worker's listening servers.

    A connection over ``max_total`` or ``max_per_ip`` is closed as soon as it is
    accepted (before a byte is read), so a peer that opens thousands of sockets
    costs a file descriptor for a moment, not a framer buffer each. Limits are
    per worker: the kernel spreads connections over workers (SO_REUSEPORT), so a
    node admits about workers times these numbers.
    """

    max_total: int = 10_000
    max_per_ip: int = 200
    message_timeout: float = 10.0  # a message started must be complete within this
    idle_timeout: float = 300.0  # no bytes at all for this long: closed
    total: int = 0
    per_ip: Counter[str] = field(default_factory=Counter)

    def admit(self, ip: str) -> bool:
        if self.total >= self.max_total or self.per_ip[ip] >= self.max_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        n = self.per_ip[ip] - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            del self.per_ip[ip]


class UdpEndpoint(asyncio.DatagramProtocol):
    """One UDP socket: the shared listen socket or the worker's private one."""

    def __init__(self, sink: Sink, *, private: bool, on_event: Callable[[str], None]) -> None:
        self.sink = sink
        self.private = private
        self.on_event = on_event
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # IPv4 addresses already are (host, port); IPv6 ones carry flow info and scope too.
        self.sink(data, addr if len(addr) == 2 else (addr[0], addr[1]), "udp", None, self.private)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead next hop lands here; the core's
        # hop timeout does the failover, so this is only counted.
        self.on_event("udp_icmp_error")

    def sendto(self, data: bytes, dest: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, dest)


class TcpConnection(asyncio.Protocol):
    """One TCP connection (accepted from a trunk, or opened to a next hop)."""

    def __init__(
        self,
        sink: Sink,
        registry: dict[int, TcpConnection],
        on_event: Callable[[str], None],
        *,
        max_message: int = 65535,
        idle_timeout: float = 300.0,
        limits: TcpLimits | None = None,
    ) -> None:
        self.sink = sink
        self.registry = registry
        self.on_event = on_event
        self.framer = StreamFramer(max_message=max_message)
        self.conn_id = next(_conn_ids)
        self.transport: asyncio.Transport | None = None
        self.peer: Addr = ("", 0)
        self.limits = limits
        self.idle_timeout = limits.idle_timeout if limits is not None else idle_timeout
        self._idle: asyncio.TimerHandle | None = None
        self._partial: asyncio.TimerHandle | None = None  # armed while a message is incomplete
        self._counted = False
        self.pending: list[bytes] = []  # written before connection_made (outbound)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: cast, don't assert.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1])
        if self.limits is not None:
            if not self.limits.admit(self.peer[0]):
                self.on_event("tcp_rejected_limit")
                self.transport.abort()
                return
            self._counted = True
        self.registry[self.conn_id] = self
        for chunk in self.pending:
            self.transport.write(chunk)
        self.pending.clear()
        self._arm_idle()

    def _arm_idle(self) -> None:
        # Slow-loris guard: a connection that sends nothing for idle_timeout is closed.
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self.on_event("tcp_idle_closed")
        self.close()

    def data_received(self, data: bytes) -> None:
        self._arm_idle()
        try:
            items = self.framer.feed(data)
        except SipError:
            self.on_event("tcp_bad_framing")
            self.close()
            return
        self._arm_partial(bool(items))
        for item in items:
            if isinstance(item, Ping):
                if self.transport is not None:
                    self.transport.write(b"\r\n")  # RFC 5626 pong
                continue
            self.sink(item, self.peer, "tcp", self.conn_id, False)

    def _arm_partial(self, progress: bool) -> None:
        # Slow-loris guard: bytes of a message that is not complete within
        # message_timeout close the connection, however slowly they trickle in
        # (the idle timer alone would be reset by every byte).
        if self.limits is None:
            return
        if not self.framer._buf:
            if self._partial is not None:
                self._partial.cancel()
                self._partial = None
        elif self._partial is None or progress:
            # A message completed: the clock restarts for the one now in the buffer.
            if self._partial is not None:
                self._partial.cancel()
            loop = asyncio.get_running_loop()
            self._partial = loop.call_later(self.limits.message_timeout, self._on_partial)

    def _on_partial(self) -> None:
        self.on_event("tcp_message_timeout")
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._partial is not None:
            self._partial.cancel()
        if self._counted and self.limits is not None:
            self._counted = False
            self.limits.release(self.peer[0])
        self.registry.pop(self.conn_id, None)


class TcpConnector:
    """Outbound TCP connections to next hops, one per destination, reused."""

    def __init__(self, sink: Sink, registry: dict[int, TcpConnection], on_event: Callable[[str], None]) -> None:
        self.sink = sink
        self.registry = registry
        self.on_event = on_event
        self.by_dest: dict[Addr, TcpConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs: the loop keeps only weak ones

    def send(self, data: bytes, dest: Addr) -> None:
        conn = self.by_dest.get(dest)
        if conn is not None and (conn.transport is None or not conn.transport.is_closing()):
            conn.write(data)
            return
        conn = TcpConnection(self.sink, self.registry, self.on_event, idle_timeout=3600.0)
        conn.pending.append(data)
        self.by_dest[dest] = conn
        loop = asyncio.get_running_loop()

        async def _connect(c: TcpConnection = conn) -> None:
            try:
                await loop.create_connection(lambda: c, dest[0], dest[1])
            except OSError:
                self.on_event("tcp_connect_failed")
                if self.by_dest.get(dest) is c:
                    del self.by_dest[dest]

        task = loop.create_task(_connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# ---------------------------------------------------------------- UDP read loop
# Linux: SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) makes recvmsg return the kernel's receive time of
# each datagram (CLOCK_REALTIME, struct timespec: two native longs). Python names neither.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)


def enable_rx_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each received datagram (False where it cannot)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def next_datagram_bytes(sock: socket.socket) -> int:
    """Size of the next datagram waiting in ``sock`` (SIOCINQ/FIONREAD), 0 when none; -1 unknown.

    Unlike SO_MEMINFO's receive-queue bytes, which Linux frees for read
    datagrams in batches (it overstates by up to ~2 MiB), "is a datagram
    waiting right now" has no lag: 0 means the worker has read everything.
    """
    buf = bytearray(4)
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except OSError:
        return -1
    return int.from_bytes(buf, sys.byteorder, signed=True)


class UdpReader:
    """A UDP socket read by the worker itself: ``add_reader`` + ``recvmsg``, a batch per turn.

    Why not uvloop's datagram transport: it gives no ancillary data, so it
    cannot say how long a datagram waited in the kernel. Here every
    datagram carries its kernel receive time (``SO_TIMESTAMPNS``), and the
    wait of the first datagram of each read pass — the oldest waiting —
    gives the overload signal that matters: requests really wait
    (``take_max_wait``).
    It needs no guess from queue bytes (SO_MEMINFO overstates: Linux frees
    read datagrams' memory in batches).

    ``sink`` gets the same arguments as from ``UdpEndpoint``. At most
    ``max_per_turn`` datagrams are read per readiness event, so timers and
    the Redis socket get their turn under a flood.
    """

    def __init__(
        self,
        sock: socket.socket,
        sink: Sink,
        *,
        private: bool,
        on_event: Callable[[str], None],
        max_per_turn: int = 64,
        bufsize: int = 65535,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.sink = sink
        self.private = private
        self.on_event = on_event
        self.max_per_turn = max_per_turn
        self.bufsize = bufsize
        self.stamped = enable_rx_timestamps(sock)
        self.max_wait = 0.0  # s, longest kernel-queue wait seen since the last take_max_wait()
        self.last_read = 0  # datagrams read in the last read pass
        self.read_total = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out: collections.deque[tuple[bytes, Addr]] = collections.deque()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            if self._out:
                self._loop.remove_writer(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def take_max_wait(self) -> float:
        """The longest a datagram waited in the kernel since the last call (s); resets it."""
        w, self.max_wait = self.max_wait, 0.0
        return w

    def _readable(self) -> None:
        # Only the first datagram of a pass is read with its stamp (recvmsg): the
        # oldest waiting. The rest use the cheaper recvfrom; what waits behind this
        # pass's work is the first datagram of the next pass, and is stamped then.
        sock, sink, private, bufsize = self.sock, self.sink, self.private, self.bufsize
        t_read = time.time()
        try:
            data, anc, _flags, addr = sock.recvmsg(bufsize, _ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            self.last_read = 0
            return
        except OSError:  # an ICMP error queued on the socket: counted, as with the transport
            self.on_event("udp_icmp_error")
            return
        if anc:
            w = t_read - _stamp(anc)
            if w > self.max_wait:
                self.max_wait = w
        n = 1
        sink(data, addr if len(addr) == 2 else (addr[0], addr[1]), "udp", None, private)
        recvfrom = sock.recvfrom
        while n < self.max_per_turn:
            try:
                data, addr = recvfrom(bufsize)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.on_event("udp_icmp_error")
                continue
            n += 1
            sink(data, addr if len(addr) == 2 else (addr[0], addr[1]), "udp", None, private)
        self.last_read = n
        self.read_total += n

    def sendto(self, data: bytes, dest: Addr) -> None:
        """Send now; when the socket buffer is full, queue and send once it is writable."""
        if self._out:
            self._out.append((data, dest))
            return
        try:
            self.sock.sendto(data, dest)
        except (BlockingIOError, InterruptedError):
            self._out.append((data, dest))
            if self._loop is not None:
                self._loop.add_writer(self.sock.fileno(), self._writable)
        except OSError:
            self.on_event("udp_send_error")

    def _writable(self) -> None:
        while self._out:
            data, dest = self._out[0]
            try:
                self.sock.sendto(data, dest)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.on_event("udp_send_error")
            self._out.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())


def _stamp(anc: list[tuple[int, int, bytes]]) -> float:
    """The SCM_TIMESTAMPNS receive time in ``anc`` (CLOCK_REALTIME), or now when absent."""
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(raw)
            return sec + nsec * 1e-9
    return time.time()


class WaitOverload:
    """Shed new INVITEs while datagrams really wait in the kernel queue (hysteresis).

    ``update(wait_s)`` once per tick with the readers' ``take_max_wait()``:
    over ``enter_s`` for ``ticks`` ticks in a row enters overload; under
    ``leave_s`` leaves it. ``drained(socks)`` re-checks at once (before
    refusing a call) that something is still queued: an empty queue means
    the backlog that set the flag is gone.
    """

    def __init__(self, enter_s: float = 0.05, leave_s: float = 0.01, ticks: int = 2) -> None:
        self.enter_s = enter_s
        self.leave_s = leave_s
        self.ticks = ticks
        self.overloaded = False
        self._over = 0

    def update(self, wait_s: float) -> bool:
        """Feed one tick's longest wait; True when the state changed."""
        if self.overloaded:
            if wait_s < self.leave_s:
                self.overloaded, self._over = False, 0
                return True
            return False
        self._over = self._over + 1 if wait_s > self.enter_s else 0
        if self._over >= self.ticks:
            self.overloaded = True
            return True
        return False

    def drained(self, socks: list[socket.socket]) -> bool:
        """Nothing waits to be read on any of ``socks`` now: leave overload."""
        if all(next_datagram_bytes(s) == 0 for s in socks):
            self.overloaded, self._over = False, 0
            return True
        return False
