"""CPU per accepted TLS connection of the trunk certificate check (gateway/tls.py ``TrunkCertCheck``).

The reference snapshot's trunk-by-IP lookup plus the SHA-256 of the client
certificate and the comparison, as the worker runs it once a handshake is
done. Process CPU time, best of 5 runs: ``python -m bench.tls_pin``.
"""

from __future__ import annotations

import ssl
import tempfile
import time
from pathlib import Path

from gateway.tls import TrunkCertCheck, fingerprint
from policy.model import Trunk
from policy.rules.refdata import RefData
from tests.tlscert import make_cert


def main(n: int = 100_000) -> None:
    der = ssl.PEM_cert_to_DER_cert(make_cert(Path(tempfile.mkdtemp()))[0].read_text())
    trunk = Trunk(
        trunk_id="T",
        enterprise_id="E",
        sources=("127.0.0.0/8",),
        tls_fingerprints=(fingerprint(der),),
    )
    ref = RefData.build([trunk], [], [], version=1)

    def lookup(ip: str) -> tuple[str, ...]:
        t = ref.trunk_for(ip)
        return t.tls_fingerprints if t is not None else ()

    check = TrunkCertCheck(lookup, lambda e: None)
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            check("127.0.0.1", der)
        best = min(best, time.process_time() - t0)
    print(f"certificate {len(der)} bytes: {best / n * 1e6:.2f} us CPU per accepted connection")


if __name__ == "__main__":
    main()
