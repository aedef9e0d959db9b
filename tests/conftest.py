"""Shared fixtures: real redis-server processes (never fakes, DEVELOPERS.md rule 2)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peers import free_port
from gateway.embedded_redis import EmbeddedRedis

__all__ = ["free_port"]  # re-exported: tests import it from here


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session, on a unix socket and a loopback TCP port."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run the README's test command, which installs it")
    state = tmp_path_factory.mktemp("redis-state")
    server = EmbeddedRedis(state, port=free_port(socket.SOCK_STREAM))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """A clean database for each test (FLUSHALL before), as a unix-socket URL."""
    import redis

    client = redis.Redis(unix_socket_path=str(redis_server.sock))
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_tcp_url(redis_url: str, redis_server: EmbeddedRedis) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d
