"""Real peers for integration tests: the gateway as a process, SIPp as caller and callee.

Everything runs on loopback with ports picked free per test; every process
started here is bounded in time and killed at the end.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SIPP_DIR = ROOT / "tests" / "sipp"
CAG = str(Path(sys.executable).parent / "cag")


@dataclass
class GatewayProc:
    redis_url: str | None  # None: the embedded redis-server under state_dir
    state_dir: Path
    next_hops: Sequence[str]
    workers: int = 2
    extra: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=lambda: free_port(socket.SOCK_STREAM))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "gateway.log"

    def start(self, timeout: float = 20.0, wait_ready: bool = True) -> None:
        """Start and wait for /readyz; on failure the process is killed, never left behind."""
        try:
            self._start(timeout, wait_ready)
        except BaseException:
            self.stop(timeout=2.0)
            raise

    def _start(self, timeout: float, wait_ready: bool) -> None:
        args = [
            CAG, "serve",
            "--listen", f"udp:127.0.0.1:{self.port}",
            "--listen", f"tcp:127.0.0.1:{self.port}",
            *(["--redis-url", self.redis_url] if self.redis_url else []),
            "--metrics", f"127.0.0.1:{self.metrics_port}",
            "--workers", str(self.workers),
            "--state-dir", str(self.state_dir),
            "--hop-timeout", "1.0",
        ]
        for hop in self.next_hops:
            args += ["--next-hop", hop]
        args += list(self.extra)
        env = dict(os.environ, CAG_PROBE_INTERVAL=os.environ.get("CAG_PROBE_INTERVAL", "0.5"))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log_tail()}")
            code, _ = self.http("/readyz" if wait_ready else "/healthz")
            if code == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready in {timeout}s: {self.http('/readyz')} {self.log_tail()}")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of one metric whose labels include ``labels``."""
        _, text = self.http("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, label_text = key.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "cag serve"],
                             capture_output=True, text=True).stdout
        return sorted(int(p) for p in out.split())

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    stdout: str
    stats: dict[str, str]


def _read_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def write_inf(path: Path, rows: Sequence[Sequence[str]]) -> Path:
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for row in rows:
            f.write(";".join(row) + ";\n")
    return path


def run_uac(
    tmp: Path,
    target_port: int,
    rows: Sequence[Sequence[str]],
    *,
    calls: int,
    rate: float = 50,
    scenario: str = "uac.xml",
    transport: str = "u1",
    limit: int = 200,
    timeout: float = 60,
    extra: Sequence[str] = (),
) -> SippResult:
    """Place ``calls`` calls through the gateway; fields per call from ``rows`` (cycled)."""
    inf = write_inf(tmp / f"calls-{time.monotonic_ns()}.csv", rows)
    stats = tmp / f"uac-stats-{time.monotonic_ns()}.csv"
    port = free_port()
    args = [
        "sipp", f"127.0.0.1:{target_port}",
        "-sf", str(scenario if os.path.isabs(scenario) else SIPP_DIR / scenario),
        "-inf", str(inf),
        "-i", "127.0.0.1", "-p", str(port),
        "-t", transport,
        "-m", str(calls), "-r", str(rate), "-l", str(limit),
        "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-recv_timeout", "10000",
        "-default_behaviors", "all,-abortunexp",
        "-max_recv_loops", "10000",
        *extra,
    ]
    proc = subprocess.run(args, capture_output=True, timeout=timeout + 30, cwd=tmp)
    st = _read_stats(stats)
    return SippResult(
        proc.returncode,
        int(st.get("SuccessfulCall(C)", 0) or 0),
        int(st.get("FailedCall(C)", 0) or 0),
        (proc.stdout + proc.stderr).decode(errors="replace")[-4000:],
        st,
    )


@dataclass
class SippUas:
    """A SIPp next hop in the background, answering OPTIONS probes (-aa)."""

    tmp: Path
    scenario: str = "uas.xml"
    transport: str = "u1"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SippUas:
        self.stats = self.tmp / f"uas-{self.port}-stats.csv"
        self.short = self.tmp / f"uas-{self.port}-{time.monotonic_ns()}-msgs.log"
        args = [
            "sipp", "-sf", str(SIPP_DIR / self.scenario),
            "-i", "127.0.0.1", "-p", str(self.port), "-t", self.transport,
            "-aa", "-nostdin", "-trace_stat", "-stf", str(self.stats), "-fd", "1",
            "-trace_shortmsg", "-shortmessage_file", str(self.short),
            "-default_behaviors", "all,-abortunexp",
            "-max_recv_loops", "10000",
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp, start_new_session=True
        )
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"SIPp UAS exited {self.proc.returncode}")
        return self

    @property
    def hop(self) -> str:
        kind = "tcp" if self.transport.startswith("t") else "udp"
        return f"{kind}:127.0.0.1:{self.port}"

    def calls_seen(self) -> int:
        """INVITEs received (OPTIONS probes, answered by -aa, are not calls)."""
        try:
            text = self.short.read_text(errors="replace")
        except OSError:
            return 0
        # -trace_shortmsg lines: date, time, epoch, R/S, Call-ID, CSeq, first line
        return sum(1 for line in text.splitlines() if "\tR\t" in line and "\tINVITE " in line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def load_policy(redis_url: str, **kinds: list[dict[str, object]]) -> None:
    """Provision records straight through the store (the CLI has its own tests)."""
    from policy.model import KIND_MODELS
    from policy.store import PolicyStore

    async def _go() -> None:
        store = await PolicyStore.connect(redis_url)
        try:
            await store.ensure_functions()
            for kind, rows in kinds.items():
                records = [KIND_MODELS[kind].model_validate(r) for r in rows]
                await store.put_records(kind, records, replace=True)
        finally:
            await store.close()

    asyncio.run(_go())


def standard_policy(
    redis_url: str, *, callees: int = 50, quiet_hours: str = "none", max_concurrent: int = 0
) -> list[list[str]]:
    """Trunk on loopback, one enterprise, filed caller 95500, consents; returns SIPp rows."""
    trunks = [{"trunk_id": "T1", "enterprise_id": "E1", "sources": "127.0.0.0/8", "max_cps": 0, "status": "active",
               "max_concurrent": max_concurrent}]
    enterprises = [{"enterprise_id": "E1", "name": "Demo", "status": "active", "quiet_hours": quiet_hours,
                    "callee_daily_cap": 0}]
    filings = [{"number": "95500", "enterprise_id": "E1", "carrier": "x", "usage": "callback", "inbound": True,
                "outbound": True, "status": "active"}]
    consents = []
    rows = []
    for i in range(callees):
        callee = f"+86138{i:08d}"
        token = f"tok-{i}"
        consents.append({"token": token, "callee": callee, "enterprise_id": "E1", "purpose": "callback",
                         "granted_at": "2026-01-01T00:00:00+00:00", "evidence_ref": f"rec://{i}"})
        rows.append(["95500", callee, token])
    load_policy(redis_url, trunks=trunks, enterprises=enterprises, filings=filings, consents=consents)
    return rows


def json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
