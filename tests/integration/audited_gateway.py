"""``cag`` with the audit sink wired into the worker exactly as docs/audit.md says.

Until gateway/worker.py carries those lines itself, the end-to-end audit tests
start the gateway through this launcher (``python -m tests.integration.audited_gateway serve …``):
it swaps in a ``Worker`` subclass before the supervisor forks. Once the worker
is wired (it imports ``AuditSink``), the launcher changes nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from gateway import worker as w
from gateway.audit import AuditSink
from gateway.proxy import Admit, Outcome


class AuditedWorker(w.Worker):
    audit: AuditSink | None = None

    async def start(self) -> None:
        spool = Path(self.spec.settings.state_dir) / "audit-spool" / f"worker-{self.spec.index}"
        self.audit = AuditSink(self.spec.redis_url, spool)
        await self.audit.start()
        await super().start()

    def _dispatch(self, actions: list[Any]) -> None:
        if self.audit is not None:
            for a in actions:
                if isinstance(a, Outcome):
                    self.audit.outcome(a)
        super()._dispatch(actions)

    async def _decide(self, a: Admit) -> None:  # the worker's own, plus the audit line
        t0 = time.perf_counter()
        decision = await self.engine.admit(a.call)
        latency = time.perf_counter() - t0
        w.metrics.DECISION_SECONDS.observe(latency)
        w.metrics.DECISIONS.labels(decision.decision, decision.reason).inc()
        if self.core is not None:
            self._dispatch(self.core.decided(a.key, decision, self.loop.time()))
        if self.audit is not None:
            self.audit.decision(a.record_id, a.call, decision, latency, self.spec.node, self.spec.index)

    async def drain(self) -> None:
        await super().drain()
        if self.audit is not None:
            await self.audit.close(timeout=3.0)


if not hasattr(w, "AuditSink"):
    w.Worker = AuditedWorker  # type: ignore[misc]

if __name__ == "__main__":
    from gateway.cli import main

    sys.exit(main())
