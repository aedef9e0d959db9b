"""``cag api`` as a child of ``cag serve --api HOST:PORT``, restarted when it dies.

A separate process, so a burst of CRM traffic or a slow complaint trace
never takes CPU from a SIP worker's event loop. The child gets the parent's
settings through one environment variable (``env_of``), so its
region, thresholds and explain decide exactly as the workers do, whether
they came from a file, the environment or flags.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("cag.supervisor")

BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


SETTINGS_ENV = "CAGAPI_SETTINGS_JSON"  # not CAG_-prefixed: never read as a setting itself


def env_of(settings: Any) -> dict[str, str]:
    """The parent's settings as one JSON variable; ``cag api`` takes them as its own (typed, so
    values such as ``consent_reject_code`` keep their types, which plain ``CAG_*`` strings do not)."""
    return {SETTINGS_ENV: settings.model_dump_json()}


class ApiChild:
    def __init__(self, settings: Any, redis_url: str, state_dir: Path) -> None:
        self.listen = str(settings.api)
        audit_dir = Path(settings.audit_dir) if settings.audit_dir else state_dir / "audit"
        self.args = [sys.executable, "-m", "gateway.cli", "api", "--listen", self.listen,
                     "--audit-dir", str(audit_dir)]
        self.env = {**os.environ, **env_of(settings), "CAG_REDIS_URL": redis_url, "CAG_STATE_DIR": str(state_dir)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._due = 0.0

    def start(self) -> None:
        # The URL goes by environment, not argv: a password in it must not show in `ps`.
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        log.info("provisioning API on %s started (pid %d)", self.listen, self.proc.pid)

    def poll(self) -> None:
        """Call from the supervisor loop: restart a dead API process after a back-off."""
        if self.proc is None:
            if self._due and time.monotonic() >= self._due:
                self._due = 0.0
                self.start()
            return
        code = self.proc.poll()
        if code is None:
            return
        _mark_dead(self.proc.pid)
        delay = BACKOFF_S[min(self.restarts, len(BACKOFF_S) - 1)]
        self.restarts += 1
        log.error("provisioning API exited with %d; restarting in %.1fs", code, delay)
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
        _mark_dead(proc.pid)


def _mark_dead(pid: int) -> None:
    """Its gauges leave the parent's /metrics (multiprocess mode); counters are kept."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
