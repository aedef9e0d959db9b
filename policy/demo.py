"""The shipped sample data set (``policy/demo/*.csv``), loaded by ``cag serve --demo``.

It lives beside the store rather than in the CLI so that the serving process
can load it without importing command-line code.
"""

from __future__ import annotations

import logging
from pathlib import Path

from policy.loader import load_file
from policy.store import PolicyStore

__all__ = ["DEMO_DIR", "DEMO_KINDS", "load_demo"]

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent / "demo"
# Reference data first, so a gateway reloading mid-way never sees a filing
# whose enterprise is not there yet.
DEMO_KINDS = ("enterprises", "trunks", "filings", "consents", "dnc")


async def load_demo(store: PolicyStore) -> None:
    """Load every sample file, each kind replacing what is there.

    The README's run command then admits and rejects real calls with no
    provisioning step.
    """
    await store.ensure_functions()
    for kind in DEMO_KINDS:
        records = load_file(kind, DEMO_DIR / f"{kind}.csv")
        await store.put_records(kind, records, replace=True)
        log.info("demo: loaded %d %s", len(records), kind)
