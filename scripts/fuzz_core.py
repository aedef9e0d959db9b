"""Coverage-guided fuzzing (atheris / libFuzzer) of the SIP parser and the proxy core.

Usage (bounded; atheris is in the dev extras):

    .venv/bin/python scripts/fuzz_core.py -max_total_time=60 [CORPUS_DIR]

Each input is fed to ``parse`` (must end in SipError or a message) and to
``ProxyCore.receive`` from a trunk, a next hop and an unknown source; the core
must never count an ``internal_error`` and every Send it returns must be well
formed (tests/unit/proxy/test_fuzz.py's checks). A crash leaves a ``crash-*``
file: turn it into a case in tests/unit/proxy/test_fuzz.py. The hypothesis tests
there are what CI runs; this finds deeper paths when given minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from gateway.sip import SipError, parse
    from tests.unit._sip_corpus import ALL_VALID
    from tests.unit.proxy._support import make_core
    from tests.unit.proxy.test_fuzz import SOURCES, drive


def one_input(data: bytes) -> None:
    try:
        parse(data)
    except SipError:
        pass
    for source in SOURCES:
        drive(make_core(), data, source, "udp", 1000.0)


def main() -> None:
    args = list(sys.argv)
    seeds = [a for a in args[1:] if not a.startswith("-")]
    if seeds:
        seed_dir = Path(seeds[0])
        seed_dir.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(ALL_VALID):
            (seed_dir / f"valid-{i}").write_bytes(m)
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
