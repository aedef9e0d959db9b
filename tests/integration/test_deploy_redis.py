"""deploy/redis/*.conf start a real redis-server and carry the settings the docs promise.

Redis reads no comment after a directive: a ``# …`` on the same line is an
argument and the server refuses to start (cluster-node.conf did). The AOF
rewrite threshold and the latency monitor are what docs/reference-data.md
relies on for loads that do not stall calls.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from bench.peers import ROOT, free_port

pytestmark = pytest.mark.integration

REDIS_DIR = ROOT / "deploy" / "redis"


@pytest.mark.parametrize("name", ["primary.conf", "cluster-node.conf"])
def test_shipped_redis_config_starts_with_the_load_settings(name: str, tmp_path: Path) -> None:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    text = (REDIS_DIR / name).read_text()
    port = free_port(socket.SOCK_STREAM)
    # Only where it runs changes: a directory and a port of the test's own, loopback only.
    text = re.sub(r"(?m)^dir .*$", "", text) + f"\ndir {tmp_path}\n"  # primary.conf has none
    text = re.sub(r"(?m)^port .*$", f"port {port}", text)
    text = re.sub(r"(?m)^bind .*$", "bind 127.0.0.1", text)
    text = re.sub(r"(?m)^cluster-config-file .*$", f"cluster-config-file {tmp_path / 'nodes.conf'}", text)
    conf = tmp_path / name
    conf.write_text(text)
    proc = subprocess.Popen(
        [exe, str(conf)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        c = redis.Redis(port=port, password="change-me", decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else "")[-2000:]
            try:
                c.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert c.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(1 << 30)}
        assert c.config_get("latency-monitor-threshold") == {"latency-monitor-threshold": "5"}
        assert c.config_get("hz") == {"hz": "100"}
        assert c.config_get("appendonly") == {"appendonly": "yes"}
        assert c.config_get("appendfsync") == {"appendfsync": "everysec"}
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_realtime_drop_in_resets_on_fork() -> None:
    text = (REDIS_DIR / "redis-realtime.conf").read_text()
    assert "[Service]" in text
    for line in ("CPUSchedulingPolicy=rr", "CPUSchedulingPriority=1", "CPUSchedulingResetOnFork=yes"):
        assert re.search(rf"(?m)^{re.escape(line)}$", text), line
