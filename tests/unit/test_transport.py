"""gateway/transport.py TCP guards, on real loopback sockets with short timeouts."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from gateway.transport import Addr, TcpConnection, TcpLimits

MSG = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"


async def _server(limits: TcpLimits) -> tuple[asyncio.Server, int, Counter[str], list[bytes], dict[int, TcpConnection]]:
    events: Counter[str] = Counter()
    got: list[bytes] = []
    registry: dict[int, TcpConnection] = {}

    def sink(data: bytes, source: Addr, transport: str, conn_id: int | None, private: bool) -> None:
        got.append(data)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: TcpConnection(sink, registry, lambda e: events.update([e]), limits=limits),
        "127.0.0.1", 0,
    )
    port = server.sockets[0].getsockname()[1]
    return server, port, events, got, registry


async def _closed(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server closed the connection within ``timeout``; False on a quiet open one."""
    try:
        return await asyncio.wait_for(reader.read(100), timeout) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_per_ip_limit_closes_the_extra_connection_and_frees_its_slot() -> None:
    limits = TcpLimits(max_total=100, max_per_ip=2)
    server, port, events, _, registry = await _server(limits)
    async with server:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        assert await _closed(conns[2][0], 2.0)
        assert events["tcp_rejected_limit"] == 1
        assert limits.per_ip["127.0.0.1"] == 2 and len(registry) == 2
        conns[0][1].close()
        await conns[0][1].wait_closed()
        for _ in range(100):
            if limits.total == 1:
                break
            await asyncio.sleep(0.02)
        assert limits.total == 1
        r, w = await asyncio.open_connection("127.0.0.1", port)  # the freed slot is usable again
        w.write(MSG)
        await w.drain()
        assert not await _closed(r, 0.3)  # still open: read timed out with nothing to read
        assert events["tcp_rejected_limit"] == 1
        for _, wr in [*conns[1:], (r, w)]:
            wr.close()


async def test_total_limit() -> None:
    limits = TcpLimits(max_total=1, max_per_ip=10)
    server, port, events, _, _ = await _server(limits)
    async with server:
        a = await asyncio.open_connection("127.0.0.1", port)
        b = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(b[0], 2.0)
        assert events["tcp_rejected_limit"] == 1
        a[1].close()


async def test_slow_loris_partial_message_is_closed_even_while_bytes_trickle() -> None:
    limits = TcpLimits(message_timeout=0.4, idle_timeout=30.0)
    server, port, events, got, _ = await _server(limits)
    async with server:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(MSG)  # a complete message first: delivered
        for ch in MSG[:30]:  # then one byte every 50 ms: resets the idle timer, never completes
            if r.at_eof():
                break
            w.write(bytes([ch]))
            try:
                await w.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.05)
        assert await _closed(r, 2.0)
        assert got == [MSG]
        assert events["tcp_message_timeout"] == 1


async def test_busy_connection_with_pipelined_messages_is_not_timed_out() -> None:
    limits = TcpLimits(message_timeout=0.3, idle_timeout=30.0)
    server, port, events, got, _ = await _server(limits)
    async with server:
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        # Every write completes one message and starts the next: never idle, always progressing.
        w.write(MSG[:20])
        for _ in range(12):
            await asyncio.sleep(0.05)
            w.write(MSG[20:] + MSG[:20])
            await w.drain()
        await asyncio.sleep(0.05)
        w.write(MSG[20:])
        await w.drain()
        await asyncio.sleep(0.1)
        assert len(got) == 13 and events["tcp_message_timeout"] == 0
        w.close()


async def test_idle_connection_is_closed() -> None:
    limits = TcpLimits(message_timeout=5.0, idle_timeout=0.3)
    server, port, events, _, _ = await _server(limits)
    async with server:
        r, _w = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(r, 3.0)
        assert events["tcp_idle_closed"] == 1
        await asyncio.sleep(0.1)
        assert limits.total == 0


async def test_tls_server_and_connector_frame_messages_as_tls(tmp_path: Path) -> None:
    """TLS is TCP's connection class behind asyncio's SSL layer: same framing, told to the core as "tls"."""
    import ssl

    from gateway.transport import TcpConnector
    from tests.tlscert import make_cert

    cert, key = make_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    client_ctx = ssl.create_default_context(cafile=str(cert))
    got: list[tuple[bytes, str]] = []
    registry: dict[int, TcpConnection] = {}

    def sink(data: bytes, source: Addr, transport: str, conn_id: int | None, private: bool) -> None:
        got.append((data, transport))

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: TcpConnection(sink, registry, lambda e: None, name="tls"), "127.0.0.1", 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        connector = TcpConnector(sink, {}, lambda e: None, ssl=client_ctx)
        connector.send(MSG + MSG, ("127.0.0.1", port))  # two messages in one write: framed apart
        for _ in range(200):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert got == [(MSG, "tls"), (MSG, "tls")]
        for conn in [*registry.values(), *connector.by_dest.values()]:
            conn.close()


async def test_tls_peer_check_closes_a_connection_the_trunk_does_not_list(tmp_path: Path) -> None:
    """Trunk identified by certificate and address: the check runs after the handshake, on the DER the
    client showed; a refused connection is aborted before a byte is read, and counted."""
    import ssl

    from gateway.tls import TrunkCertCheck, fingerprint
    from tests.tlscert import make_cert

    server_cert, server_key = make_cert(tmp_path, name="server")
    good = make_cert(tmp_path, cn="trunk-a", name="a")
    # Trusted by the CA file too: only the fingerprint tells the two apart.
    other = make_cert(tmp_path, cn="trunk-b", name="b")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(good[0].read_bytes() + other[0].read_bytes())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(server_cert), str(server_key))
    server_ctx.load_verify_locations(cafile=str(ca))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    pinned = fingerprint(ssl.PEM_cert_to_DER_cert(good[0].read_text()))
    pins: dict[str, tuple[str, ...]] = {"127.0.0.1": (pinned,)}
    events: Counter[str] = Counter()
    got: list[bytes] = []
    limits = TcpLimits()

    def sink(data: bytes, source: Addr, transport: str, conn_id: int | None, private: bool) -> None:
        got.append(data)

    check = TrunkCertCheck(lambda ip: pins.get(ip, ()), lambda e: events.update([e]))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: TcpConnection(
            sink, {}, lambda e: events.update([e]), limits=limits, name="tls", peer_check=check
        ),
        "127.0.0.1",
        0,
        ssl=server_ctx,
    )
    port = server.sockets[0].getsockname()[1]

    async def attempt(cert: tuple[Path, Path]) -> bool:
        """Send one message with this client certificate; True when it reached the sink."""
        ctx = ssl.create_default_context(cafile=str(server_cert))
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        before = len(got)
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
        )
        try:
            w.write(MSG)
            await w.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        closed = await _closed(r, 0.5)
        w.close()
        return len(got) > before and not closed

    async with server:
        assert await attempt(good)
        assert not await attempt(other)
        assert events[TrunkCertCheck.EVENT] == 1
        pins.clear()  # the trunk without fingerprints: address alone, as before
        assert await attempt(other)
        assert events[TrunkCertCheck.EVENT] == 1
    await asyncio.sleep(0.05)
    assert limits.total == 0  # the refused connection gave its slot back
