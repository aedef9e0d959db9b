"""The worker's own UDP read loop: kernel receive times, a batch per loop turn, overload by waiting.

Part of the transport layer (``gateway.transport`` re-exports its names);
apart because it reads sockets itself instead of through asyncio's
datagram protocol, and because the overload signal (``WaitOverload``) is
the time datagrams wait in the kernel.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.transport import Addr, Sink


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
    the Redis socket get their turn under a flood. ``after`` runs once at the
    end of a pass that read something: per-pass work (the worker's one
    ``call_at`` for the core's deadline) is done once, not per datagram.
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
        after: Callable[[], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.sink = sink
        self.private = private
        self.on_event = on_event
        self.max_per_turn = max_per_turn
        self.bufsize = bufsize
        self.after = after  # once per read pass that read something (the worker arms its timer)
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
        if self.after is not None:
            self.after()

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
