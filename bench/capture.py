"""A loopback capture of one SIPp caller's traffic with tcpdump, for INVITE → final latency.

Why a capture: SIPp's own response times come in 4 ms steps on the
reference machine (docs/performance.md) and the gateway's histogram only covers
its decision, not the whole INVITE → final path. tcpdump timestamps each
datagram in the kernel with µs resolution, and its BPF filter runs in the
kernel too, so only what is needed is copied out: INVITEs and final
responses (status not 1xx) on the caller's port, about three datagrams a
call. The file is parsed after the step (``bench.pcap.latencies``), when the
load has stopped, so the parse does not disturb the measurement.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

# INVITE requests ("INVI"), or responses ("SIP/") whose status does not start with "1".
_FILTER = "({ports}) and (udp[8:4] = 0x494e5649 or (udp[8:4] = 0x5349502f and udp[16:1] != 0x31))"


def available() -> str | None:
    """None when tcpdump can capture here, else why not (not installed, not root)."""
    if shutil.which("tcpdump") is None:
        return "tcpdump is not installed (scripts/setup.sh installs it)"
    if os.geteuid() != 0:
        return "capturing on loopback needs root"
    return None


class Capture:
    """``tcpdump -i lo`` writing ``path`` for the datagrams of some UDP ports."""

    def __init__(self, path: Path, ports: int | list[int], iface: str = "lo") -> None:
        self.path = Path(path)
        self.ports = [ports] if isinstance(ports, int) else list(ports)
        self.iface = iface
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats: dict[str, int] = {}

    def start(self, timeout: float = 5.0) -> Capture:
        """Start and wait until tcpdump says it is listening (packets before that would be lost)."""
        self._err = open(self.path.with_suffix(".tcpdump.log"), "w+b")  # closed in stop()
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", self.iface, "-n", "-s", "2048", "-B", "32768", "-w", str(self.path),
             _FILTER.format(ports=" or ".join(f"udp port {p}" for p in self.ports))],
            stdout=subprocess.DEVNULL, stderr=self._err, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._err.seek(0)
            if b"listening on" in self._err.read():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self._err.seek(0)
        msg = self._err.read().decode(errors="replace")
        self.stop()
        raise RuntimeError(f"tcpdump did not start: {msg}")

    def stop(self) -> dict[str, int]:
        """SIGINT (tcpdump flushes and prints its counters), then the counters it printed; idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if hasattr(self, "_err") and not self._err.closed:
            self._err.seek(0)
            text = self._err.read().decode(errors="replace")
            self._err.close()
            for key, pat in (("captured", r"(\d+) packets captured"),
                             ("dropped_by_kernel", r"(\d+) packets dropped by kernel")):
                m = re.search(pat, text)
                if m:
                    self.stats[key] = int(m.group(1))
        return self.stats
