"""asyncio protocols that only move bytes between sockets and the proxy core.

Like aioquic's asyncio adapter: a datagram or a framed TCP message goes to
``sink`` with its source and the loop time; nothing here parses SIP beyond
TCP framing, which must happen before a message exists at all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ssl import SSLContext, SSLError
from typing import Any, cast

from gateway.sip import Ping, SipError, StreamFramer
from gateway.udp_reader import (
    SO_TIMESTAMPNS,
    UdpReader,
    WaitOverload,
    enable_rx_timestamps,
    next_datagram_bytes,
)

# The worker takes every transport from here, the UDP read loop (gateway/udp_reader.py) included.
__all__ = [
    "SO_TIMESTAMPNS",
    "Addr",
    "Sink",
    "TcpConnection",
    "TcpConnector",
    "TcpLimits",
    "UdpEndpoint",
    "UdpReader",
    "WaitOverload",
    "enable_rx_timestamps",
    "next_datagram_bytes",
]

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
    """One TCP or TLS connection (accepted from a trunk, or opened to a next hop).

    ``name`` is the transport the core is told ("tcp" or "tls"): over TLS the
    asyncio SSL layer hands this protocol the decrypted stream, framed the same way,
    and calls ``connection_made`` once the handshake has completed, which is where
    ``peer_check(ip, client certificate DER or None)`` runs (``gateway.tls.TrunkCertCheck``:
    a trunk identified by its certificate as well as its address); False closes the connection
    before a byte is read.
    """

    def __init__(
        self,
        sink: Sink,
        registry: dict[int, TcpConnection],
        on_event: Callable[[str], None],
        *,
        max_message: int = 65535,
        idle_timeout: float = 300.0,
        limits: TcpLimits | None = None,
        name: str = "tcp",
        peer_check: Callable[[str, bytes | None], bool] | None = None,
    ) -> None:
        self.name = name
        self.peer_check = peer_check
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
        if self.peer_check is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not self.peer_check(self.peer[0], der):  # counted and logged by the check
                self.transport.abort()
                return
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
            self.sink(item, self.peer, self.name, self.conn_id, False)

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
    """Outbound TCP (or, with ``ssl``, TLS) connections, one per destination, reused."""

    def __init__(
        self,
        sink: Sink,
        registry: dict[int, TcpConnection],
        on_event: Callable[[str], None],
        ssl: SSLContext | None = None,
    ) -> None:
        self.sink = sink
        self.registry = registry
        self.on_event = on_event
        self.ssl = ssl
        self.name = "tls" if ssl is not None else "tcp"
        self.by_dest: dict[Addr, TcpConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs: the loop keeps only weak ones

    def send(self, data: bytes, dest: Addr) -> None:
        conn = self.by_dest.get(dest)
        if conn is not None and (conn.transport is None or not conn.transport.is_closing()):
            conn.write(data)
            return
        conn = TcpConnection(self.sink, self.registry, self.on_event, idle_timeout=3600.0, name=self.name)
        conn.pending.append(data)
        self.by_dest[dest] = conn
        loop = asyncio.get_running_loop()
        ctx = self.ssl

        async def _connect(c: TcpConnection = conn) -> None:
            try:
                if ctx is None:
                    await loop.create_connection(lambda: c, dest[0], dest[1])
                else:  # the hop's certificate is checked against its address (an IP SAN)
                    await loop.create_connection(lambda: c, dest[0], dest[1], ssl=ctx, server_hostname=dest[0])
            except (OSError, SSLError):  # ssl.SSLCertVerificationError is an OSError too
                self.on_event(f"{self.name}_connect_failed")
                if self.by_dest.get(dest) is c:
                    del self.by_dest[dest]

        task = loop.create_task(_connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
