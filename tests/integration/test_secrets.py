"""Secrets and access: Redis password and TLS work, and no password reaches a log or error.

Real ``redis-server`` processes on loopback: one with ``--requirepass``, one
TLS-only (``--tls-port``, a self-signed certificate made with the openssl CLI;
skipped when openssl or a TLS-capable redis-server is missing).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy.redact import redact_settings, redact_url
from policy.store import PolicyStore, StoreError

PASSWORD = "s3cr3t-Pa55-do-not-log"
ROOT = Path(__file__).resolve().parents[2]
CAG = ROOT / ".venv" / "bin" / "cag"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {proc.stdout.read() if proc.stdout else b''!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"redis-server on {port} did not start")


def _start(tmp: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["redis-server", "--save", "", "--appendonly", "no", "--dir", str(tmp), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def auth_redis(tmp_path: Path) -> Iterator[int]:
    port = _free_port()
    for proc in _start(tmp_path, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD):
        _wait_port(port, proc)
        yield port


def test_redact_url_shapes() -> None:
    assert redact_url(f"redis://:{PASSWORD}@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url(f"rediss://user:{PASSWORD}@h:6380") == "rediss://user:***@h:6380"
    assert redact_url(f"redis://h:6379/0?password={PASSWORD}&db=1") == "redis://h:6379/0?password=***&db=1"
    assert redact_url("unix:///var/run/redis.sock") == "unix:///var/run/redis.sock"
    dumped = redact_settings({"redis_url": f"redis://:{PASSWORD}@h", "rr_secret": "k", "workers": 2})
    assert PASSWORD not in repr(dumped) and dumped["rr_secret"] == "***" and dumped["workers"] == 2


async def test_password_url_connects_and_wrong_password_error_hides_it(auth_redis: int) -> None:
    store = await PolicyStore.connect(f"redis://:{PASSWORD}@127.0.0.1:{auth_redis}/0")
    try:
        assert await store.ping()
    finally:
        await store.close()
    wrong = "wrong-" + PASSWORD
    with pytest.raises(StoreError) as exc:
        await PolicyStore.connect(f"redis://:{wrong}@127.0.0.1:{auth_redis}/0")
    assert wrong not in str(exc.value) and ":***@" in str(exc.value)


def test_cli_with_password_url_works_and_never_prints_it(auth_redis: int, tmp_path: Path) -> None:
    env = {**os.environ, "CAG_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{auth_redis}/0"}
    demo = ROOT / "policy" / "demo" / "trunks.csv"
    ok = subprocess.run(
        [str(CAG), "policy", "load", "trunks", str(demo)],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert PASSWORD not in ok.stdout + ok.stderr
    env["CAG_REDIS_URL"] = f"redis://:wrong-{PASSWORD}@127.0.0.1:{auth_redis}/0"
    bad = subprocess.run(
        [str(CAG), "policy", "load", "trunks", str(demo)],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert bad.returncode != 0
    assert PASSWORD not in bad.stdout + bad.stderr


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    port = _free_port()
    for proc in _start(
        tmp_path, "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        "--requirepass", PASSWORD,
    ):
        try:
            _wait_port(port, proc)
        except RuntimeError as e:
            pytest.skip(f"redis-server without TLS support: {e}")
        yield port, cert


async def test_rediss_url_with_password_connects(tls_redis: tuple[int, Path]) -> None:
    port, cert = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    store = await PolicyStore.connect(url)
    try:
        assert await store.ping()
    finally:
        await store.close()
    # Plain redis:// to a TLS port fails, and the error names no password.
    with pytest.raises(StoreError) as exc:
        await PolicyStore.connect(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    assert PASSWORD not in str(exc.value)
