"""``cag api`` as a child of ``cag serve --api HOST:PORT``, restarted when it dies.

A separate process, so a burst of CRM traffic or a slow complaint trace
never takes CPU from a SIP worker's event loop. The child gets the parent's
settings through one environment variable (``env_of``), so its
region, thresholds and explain decide exactly as the workers do, whether
they came from a file, the environment or flags.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from gateway.audit.service import SupervisedChild

SETTINGS_ENV = "CAGAPI_SETTINGS_JSON"  # not CAG_-prefixed: never read as a setting itself


def env_of(settings: Any) -> dict[str, str]:
    """The parent's settings as one JSON variable; ``cag api`` takes them as its own (typed, so
    values such as ``consent_reject_code`` keep their types, which plain ``CAG_*`` strings do not)."""
    return {SETTINGS_ENV: settings.model_dump_json()}


class ApiChild(SupervisedChild):
    def __init__(self, settings: Any, redis_url: str, state_dir: Path) -> None:
        self.listen = str(settings.api)
        audit_dir = Path(settings.audit_dir) if settings.audit_dir else state_dir / "audit"
        args = [sys.executable, "-m", "gateway.cli", "api", "--listen", self.listen,
                "--audit-dir", str(audit_dir)]
        # The URL goes by environment, not argv: a password in it must not show in `ps`.
        env = {**os.environ, **env_of(settings), "CAG_REDIS_URL": redis_url, "CAG_STATE_DIR": str(state_dir)}
        super().__init__(f"provisioning API on {self.listen}", args, env)

    def exited(self, pid: int) -> None:
        """Its gauges leave the parent's /metrics (multiprocess mode); counters are kept."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)
