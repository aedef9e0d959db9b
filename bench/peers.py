"""Real peers on loopback: the gateway as a process, SIPp as caller and callee.

Shared by the integration tests (``tests/integration/harness.py`` re-exports
these) and by the benchmarks (``python -m bench sweep`` / ``replay``), so the
gateway a benchmark measures is started exactly the way the tests start it.
Everything runs on loopback with ports picked free; every process started
here runs in its own session and is killed by its owner at the end.
"""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
SIPP_DIR = ROOT / "tests" / "sipp"
BENCH_SIPP_DIR = ROOT / "bench" / "sipp"
CAG = str(Path(sys.executable).parent / "cag")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A loopback port free for both UDP and TCP at the time of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(socket.AF_INET, other) as s2:
                s2.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition → {(name, labels): value}; samples of one series summed.

    Label values here are code-defined (reasons, events, bucket bounds), never
    quoted strings with commas, so a split on ``","`` is enough.
    """
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, label_text = key.partition("{")
        labels: list[tuple[str, str]] = []
        for part in label_text.rstrip("}").split(","):
            k, sep, v = part.partition("=")
            if sep:
                labels.append((k.strip(), v.strip().strip('"')))
        try:
            val = float(value)
        except ValueError:
            continue
        k2 = (name, frozenset(labels))
        out[k2] = out.get(k2, 0.0) + val
    return out


@dataclass
class GatewayProc:
    """``cag serve`` as a child process (own session), ready when /readyz answers 200."""

    redis_url: str | None  # None: the embedded redis-server under state_dir
    state_dir: Path
    next_hops: Sequence[str]
    workers: int = 2
    extra: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=lambda: free_port(socket.SOCK_STREAM))
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

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
        env.update(self.env)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
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
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """One scrape of /metrics, parsed (empty when the endpoint does not answer)."""
        _, text = self.http("/metrics")
        return parse_metrics(text)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of one metric whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics().items() if n == name and want <= ls)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "cag serve"],
                             capture_output=True, text=True).stdout
        return sorted(int(p) for p in out.split())

    def archiver_pids(self) -> list[int]:
        """The audit archiver child (``audit_archiver = on``), if the gateway runs one."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "audit archive"],
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
        if hasattr(self, "_log"):
            self._log.close()
        return self.proc.returncode


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    stdout: str
    stats: dict[str, str]


def read_sipp_stats(path: Path) -> list[dict[str, str]]:
    """Every row of a SIPp ``-trace_stat`` CSV (``;``-separated, one row per ``-fd`` period)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        return []
    return [dict(zip(rows[0], r, strict=False)) for r in rows[1:] if len(r) >= len(rows[0]) - 1]


def _read_stats(path: Path) -> dict[str, str]:
    rows = read_sipp_stats(path)
    return rows[-1] if rows else {}


def write_inf(path: Path, rows: Sequence[Sequence[str]], order: str = "SEQUENTIAL") -> Path:
    """A SIPp injection file: the order line, then one ``;``-terminated row per call."""
    with open(path, "w") as f:
        f.write(order + "\n")
        for row in rows:
            f.write(";".join(row) + ";\n")
    return path


def uac_args(
    target: str,
    scenario: str | Path,
    inf: Path,
    stats: Path,
    *,
    port: int,
    calls: int,
    rate: float,
    transport: str = "u1",
    limit: int = 200,
    timeout: float = 60,
    extra: Sequence[str] = (),
) -> list[str]:
    """The SIPp command line of a caller, as the tests and the benchmarks run it.

    ``-default_behaviors all,-abortunexp``: through a multi-worker proxy a 180
    can overtake its 200, which SIPp would otherwise abort.
    """
    path = Path(scenario) if os.path.isabs(scenario) else SIPP_DIR / scenario
    return [
        "sipp", target,
        "-sf", str(path),
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
    args = uac_args(
        f"127.0.0.1:{target_port}", scenario, inf, stats, port=free_port(), calls=calls,
        rate=rate, transport=transport, limit=limit, timeout=timeout, extra=extra,
    )
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
    trace_messages: bool = True  # -trace_shortmsg costs a write per message: off for load
    extra: Sequence[str] = ()

    def start(self) -> SippUas:
        self.stats = self.tmp / f"uas-{self.port}-stats.csv"
        self.short = self.tmp / f"uas-{self.port}-{time.monotonic_ns()}-msgs.log"
        args = [
            "sipp", "-sf", str(SIPP_DIR / self.scenario),
            "-i", "127.0.0.1", "-p", str(self.port), "-t", self.transport,
            "-aa", "-nostdin", "-trace_stat", "-stf", str(self.stats), "-fd", "1",
            *(["-trace_shortmsg", "-shortmessage_file", str(self.short)] if self.trace_messages else []),
            "-default_behaviors", "all,-abortunexp",
            "-max_recv_loops", "10000",
            *self.extra,
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


def load_policy(redis_url: str, **kinds: Sequence[Mapping[str, object]]) -> None:
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
