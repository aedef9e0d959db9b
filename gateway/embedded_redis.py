"""The private ``redis-server`` the gateway runs when no Redis URL is configured.

A carrier evaluating the gateway should not have to operate Redis first, so
with no URL every command uses a server of its own under the state
directory: unix socket only (no TCP port to collide with or to expose), AOF
persistence so policy data and audit survive restarts. ``serve`` owns the
child and stops it on exit; any other command (``cag policy load`` before
``serve`` ever ran) starts it if its socket does not answer and leaves it
running, so a later ``serve`` finds the data.

Two settings keep a consent/DNC load (issue 14) from stalling calls, both
measured in docs/reference-data.md (*What sets the longest stall*):

* ``auto-aof-rewrite-min-size 1gb`` (Redis's default is 64mb): every AOF
  rewrite forks, and a fork stops Redis for ~10 ms per 100 MB of data on a
  VM; at 64mb a 5M-row load rewrote three times, at 1gb none. The cost: the
  AOF's incremental part may grow to ~1 GB on disk (and be replayed at a
  restart) before it is compacted.
* ``hz 100`` (default 10): Redis's active expiry may run for 25 % of a
  server tick, 25 ms at hz 10 (measured: 25 ms with 300k keys expiring at
  once), 2.5 ms at hz 100; the cost is ~100 background ticks a second,
  a fraction of a per cent of a core when idle.
* ``CAG_REDIS_REALTIME=1`` (opt-in) runs Redis's main thread under
  ``SCHED_RR`` priority 1, reset on fork (the rewrite child and the
  background threads stay normal). On a box where the gateway, a loader and
  Redis share the cores, Redis then never waits for a CPU behind them
  (measured: 20 s of waiting during a 5M-row load → 0.1 s). It needs
  ``CAP_SYS_NICE`` or an ``RLIMIT_RTPRIO`` of at least 1 (systemd
  ``LimitRTPRIO=1``); without either the server runs as before, with a
  warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Settings the embedded server always gets (``extra_args`` come after, so they win).
AOF_REWRITE_MIN_SIZE = "1gb"
HZ = "100"
REALTIME_ENV = "CAG_REDIS_REALTIME"


class EmbeddedRedisError(RuntimeError):
    pass


def socket_path(state_dir: Path) -> Path:
    return state_dir / "redis" / "redis.sock"


def url_for(state_dir: Path) -> str:
    return f"unix://{socket_path(state_dir)}"


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(path))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A ``redis-server`` child on a unix socket in ``state_dir/redis``."""

    def __init__(
        self, state_dir: Path, *, port: int = 0, extra_args: tuple[str, ...] = (), realtime: bool | None = None
    ) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "redis"
        self.sock = socket_path(self.state_dir)
        self.port = port  # 0: unix socket only
        self.extra_args = extra_args
        if realtime is None:
            realtime = os.environ.get(REALTIME_ENV, "").strip().lower() in ("1", "yes", "true", "on")
        self.realtime = realtime
        self.realtime_applied = False
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def running(self) -> bool:
        return _answers(self.sock)

    def start(self, timeout: float = 10.0) -> None:
        """Start the server unless one already answers on our socket."""
        if self.running():
            return
        exe = shutil.which("redis-server")
        if exe is None:
            raise EmbeddedRedisError(
                "redis-server not found on PATH: install Debian's redis-server "
                "(the README's set-up does) or pass --redis-url"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.sock.exists():
            self.sock.unlink()
        args = [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.sock),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.dir / "redis.log"),
            "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
            "--hz", HZ,
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                logfile = self.dir / "redis.log"
                tail = logfile.read_text(errors="replace")[-500:] if logfile.exists() else ""
                raise EmbeddedRedisError(f"redis-server exited with {self.proc.returncode}: {tail}")
            if _answers(self.sock):
                if self.realtime:
                    self._make_realtime()
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer on {self.sock} within {timeout}s")

    def _make_realtime(self) -> None:
        """SCHED_RR 1 for the main thread only (its pid), reset on fork: the AOF child stays normal."""
        assert self.proc is not None
        try:
            os.sched_setscheduler(self.proc.pid, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(1))
            self.realtime_applied = True
        except (OSError, AttributeError) as e:
            log.warning(
                "%s is set but redis-server cannot run realtime (%s): it runs at normal priority; "
                "grant CAP_SYS_NICE or LimitRTPRIO=1 (docs/reference-data.md)", REALTIME_ENV, e,
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child we started (AOF is flushed by redis on SIGTERM)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_running(state_dir: Path) -> str:
    """For one-off commands: make sure the embedded server answers; return its URL."""
    server = EmbeddedRedis(state_dir)
    server.start()
    # Deliberately not stopped: detach so the data stays reachable for `serve`.
    return server.url


def default_state_dir() -> Path:
    return Path(os.environ.get("CAG_STATE_DIR", ".state")).resolve()
