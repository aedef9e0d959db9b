"""bench/kamailio: the comparison proxy's configuration is filled in for each run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.kamailio.compare import ctx_switches
from bench.kamailio.run import CFG, SHM_MB_DEFAULT, render


def test_render_fills_port_next_hop_and_redis() -> None:
    cfg = render(15099, "127.0.0.1:15098", "/tmp/x/redis.sock")
    assert '"!LISTEN!udp:127.0.0.1:15099!"' in cfg
    assert '"!NEXT_HOP!127.0.0.1:15098!"' in cfg
    assert '"!REDIS!unix=/tmp/x/redis.sock!"' in cfg
    # Every placeholder of the shipped file was replaced: a forgotten one would
    # make Kamailio listen on port 0 or relay to the wrong peer.
    assert "udp:127.0.0.1:0!" not in cfg and "5070" not in cfg and "/tmp/redis.sock" not in cfg
    assert "ndb_redis" in cfg and "htable" in cfg and "record_route()" in cfg


def test_shipped_config_is_valid_kamailio(tmp_path: Path) -> None:
    """`kamailio -c` accepts the rendered file (a function whose module is not loaded fails here)."""
    kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(kamailio).exists():
        pytest.skip("kamailio not installed (the comparison proxy is optional)")
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(render(15099, "127.0.0.1:15098", str(tmp_path / "redis.sock")))
    proc = subprocess.run(
        [kamailio, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sized_like_the_relay_and_for_the_sweep_rates() -> None:
    """The two causes of the 2026-12-07 failure at 2,000 calls/s stay fixed.

    The UDP receive buffer is the relay's 4 MiB (Kamailio's own cap is 256 KiB),
    and the shared memory holds ~5 s of transactions (tm's wait timer) at
    4,000 calls/s: ~0.15 MB per call/s measured, 256 MB ran out at 2,000/s.
    """
    cfg = CFG.read_text()
    maxbuffer = re.search(r"^maxbuffer=(\d+)$", cfg, re.MULTILINE)
    assert maxbuffer and int(maxbuffer.group(1)) >= 4 * 1024 * 1024
    assert re.search(r"^children=2$", cfg, re.MULTILINE)
    assert SHM_MB_DEFAULT >= 0.15 * 4000


def test_ctx_switches_counts_this_process() -> None:
    assert ctx_switches([os.getpid()]) > 0
    assert ctx_switches([2**22 + 12345]) == 0  # a pid that is gone counts nothing
