"""``policy.hotlink``: the hot path's own connection, against a real redis-server.

Unix socket and TCP, AUTH and SELECT from the URL, error replies as
``ResponseError`` objects in the batch, batches answered in order, a
restarted server (reconnect) and a hung one (every batch in flight fails,
the next connects afresh).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from redis.exceptions import ConnectionError, ResponseError

from gateway.embedded_redis import EmbeddedRedis
from policy.hotlink import HotLink, LinkTarget


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server on TCP with a password (set after start: the start-up check PINGs unauthenticated)."""
    s = EmbeddedRedis(tmp_path / "r", port=_free_port())
    s.start()
    admin = sync_redis.Redis(unix_socket_path=str(s.sock))
    admin.config_set("requirepass", "s3cret")
    admin.close()
    yield s
    s.stop()


def test_targets_from_urls() -> None:
    t = LinkTarget.from_url("rediss://bob:pw%40x@h.example:6380/2?ssl_cert_reqs=none")
    assert t == LinkTarget(
        host="h.example", port=6380, username="bob", password="pw@x", db=2, tls=True, tls_verify=False
    )
    u = LinkTarget.from_url("unix:///run/r.sock?db=3&password=pw")
    assert u is not None and (u.path, u.db, u.password) == ("/run/r.sock", 3, "pw")
    assert LinkTarget.from_url("redis://h?socket_keepalive=true") is None  # not ours: redis-py


async def test_tcp_auth_select_and_ordered_batches(server: EmbeddedRedis) -> None:
    link = HotLink(LinkTarget(host="127.0.0.1", port=server.port, password="s3cret", db=2))
    try:
        batches = await asyncio.gather(
            *(link.pipeline([("SET", f"k{i}", i), ("GET", f"k{i}"), ("INCR", "n")]) for i in range(50))
        )
        assert [b[1] for b in batches] == [str(i).encode() for i in range(50)]
        assert sorted(b[2] for b in batches) == list(range(1, 51))
        (db,) = await link.pipeline([("CLIENT", "INFO")])
        assert b" db=2 " in db
        out = await link.pipeline([("FCALL", "nope", 0), ("PING",)])
        assert isinstance(out[0], ResponseError) and "function not found" in str(out[0]).lower()
        assert out[1] == b"PONG"
    finally:
        link.close()


async def test_wrong_password_fails_the_connection(server: EmbeddedRedis) -> None:
    link = HotLink(LinkTarget(host="127.0.0.1", port=server.port, password="wrong"))
    with pytest.raises(ConnectionError):
        await link.pipeline([("PING",)])
    link.close()


async def test_unix_socket_and_a_restarted_server(tmp_path: Path) -> None:
    s = EmbeddedRedis(tmp_path / "u")
    s.start()
    link = HotLink(LinkTarget.from_url(s.url) or LinkTarget())
    try:
        assert await link.pipeline([("PING",)]) == [b"PONG"]
        s.stop()
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionError):
            await link.pipeline([("PING",)])
        s.start()
        assert await link.pipeline([("PING",)]) == [b"PONG"]
    finally:
        link.close()
        s.stop()


async def test_a_hung_server_fails_the_batches_in_flight_then_reconnects(tmp_path: Path) -> None:
    s = EmbeddedRedis(tmp_path / "h")
    s.start()
    link = HotLink(LinkTarget.from_url(s.url) or LinkTarget(), reply_timeout=0.3)
    try:
        assert await link.pipeline([("PING",)]) == [b"PONG"]
        assert s.proc is not None
        os.kill(s.proc.pid, signal.SIGSTOP)
        try:
            pending = [asyncio.ensure_future(link.pipeline([("PING",)])) for _ in range(3)]
            done = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 2.0)
            assert all(isinstance(r, ConnectionError) for r in done)
        finally:
            os.kill(s.proc.pid, signal.SIGCONT)
        assert await link.pipeline([("PING",)]) == [b"PONG"]
    finally:
        link.close()
        s.stop()


async def test_send_now_answers_by_callback_in_order_and_fails_on_a_lost_link(
    tmp_path: Path,
) -> None:
    """The hot path's way in: nothing sent before a connection exists; replies from data_received."""
    s = EmbeddedRedis(tmp_path / "n")
    s.start()
    link = HotLink(LinkTarget.from_url(s.url) or LinkTarget())
    got: list[object] = []
    try:
        # Not connected: nothing sent, the caller takes pipeline().
        assert not link.send_now([("PING",)], got.append)
        assert await link.pipeline([("PING",)]) == [b"PONG"]
        for i in range(20):
            batch = [("SET", f"k{i}", i), ("GET", f"k{i}"), ("XX-NO-SUCH",)]
            assert link.send_now(batch, got.append)
        t = asyncio.get_running_loop().time() + 2.0
        while len(got) < 20 and asyncio.get_running_loop().time() < t:
            await asyncio.sleep(0.005)
        assert [r[1] for r in got] == [str(i).encode() for i in range(20)]  # type: ignore[index]
        assert all(isinstance(r[2], ResponseError) for r in got)  # type: ignore[index]
        got.clear()
        assert s.proc is not None
        os.kill(s.proc.pid, signal.SIGSTOP)
        try:
            assert link.send_now([("PING",)], got.append)
            link._drop(ConnectionError("gone"))  # what a lost connection or the stuck check does
        finally:
            os.kill(s.proc.pid, signal.SIGCONT)
        assert len(got) == 1 and isinstance(got[0], ConnectionError)
    finally:
        link.close()
        s.stop()


async def test_the_stores_batches_take_the_hot_link_without_a_task(tmp_path: Path) -> None:
    """Once connected, a loop turn's store calls are written from the batcher's flush itself."""
    from policy.store import PolicyStore

    s = EmbeddedRedis(tmp_path / "b")
    s.start()
    store = await PolicyStore.connect(s.url)
    try:
        await store.fcall("cag_release", ["{t:x}:conc"], ["c1"])  # first batch: connects (a task)
        loop = asyncio.get_running_loop()
        spawned: list[object] = []
        real = loop.create_task

        def counting(coro: object, **kw: object) -> object:
            spawned.append(coro)
            return real(coro, **kw)  # type: ignore[arg-type]

        loop.create_task = counting  # type: ignore[method-assign]
        try:
            futs = [store.release("t-x", f"c{i}") for i in range(10)]
            assert [await f for f in futs] == [False] * 10
        finally:
            del loop.create_task
        assert spawned == []
    finally:
        await store.close()
        s.stop()
