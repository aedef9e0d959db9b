"""The archiver as a child of ``cag serve`` (one per node), restarted when it dies.

Operators may instead (or as well) run ``cag audit archive`` as services of
their own: archivers share the stream through one consumer group, so any
number of them cooperate. The child's name is stable per node, so a
restarted child first finishes what its predecessor had read but not yet
acknowledged.

``SupervisedChild`` is the supervision both of ``cag serve``'s helper
processes use (this archiver and ``provisioning.service.ApiChild``). It
lives here because ``gateway.audit`` is the one gateway layer the
provisioning package may import (the import-linter contracts in
pyproject.toml), and the data path must not import provisioning.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("cag.supervisor")

BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


class SupervisedChild:
    """One helper process of ``cag serve``: ``start``, ``poll`` from the supervisor loop, ``stop``.

    A child that exits is started again after a back-off (``BACKOFF_S``,
    growing with each restart). Its own session: the terminal's Ctrl-C goes
    to the supervisor, which stops it with SIGTERM (SIGKILL after ``timeout``).
    """

    def __init__(self, what: str, args: list[str], env: dict[str, str]) -> None:
        self.what = what
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._due = 0.0

    def start(self) -> None:
        # stdout/stderr inherited: its log lines join the gateway's.
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        log.info("%s started (pid %d)", self.what, self.proc.pid)

    def poll(self) -> None:
        """Call from the supervisor loop: restart a dead child after a back-off."""
        if self.proc is None:
            if self._due and time.monotonic() >= self._due:
                self._due = 0.0
                self.start()
            return
        code = self.proc.poll()
        if code is None:
            return
        self.exited(self.proc.pid)
        delay = BACKOFF_S[min(self.restarts, len(BACKOFF_S) - 1)]
        self.restarts += 1
        log.error("%s exited with %d; restarting in %.1fs", self.what, code, delay)
        self.proc = None
        self._due = time.monotonic() + delay

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.exited(proc.pid)

    def exited(self, pid: int) -> None:
        """Called once the child ``pid`` is gone (for clean-up of what it left behind)."""


class ArchiverChild(SupervisedChild):
    def __init__(self, redis_url: str, archive_dir: Path, name: str, *, retention_days: int = 30,
                 log_level: str = "info") -> None:
        args = [
            sys.executable, "-m", "gateway.cli", "audit", "archive",
            "--archive-dir", str(archive_dir), "--name", name,
            "--retention-days", str(retention_days), "--log-level", log_level,
        ]
        # The URL goes by environment, not argv: a password in it must not show in `ps`.
        super().__init__("audit archiver", args, dict(os.environ, CAG_REDIS_URL=redis_url))
        self.redis_url = redis_url
