"""Self-signed certificates for the TLS tests, made with the ``openssl`` CLI (no Python dependency).

Each is its own trust anchor (put the certificate in ``tls_ca_file``) and
names 127.0.0.1 and localhost, so a peer checking the host name of a
loopback address accepts it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_cert(directory: Path, cn: str = "cag-test", name: str = "cert") -> tuple[Path, Path]:
    """(certificate, key) PEM files ``<name>.pem`` / ``<name>.key`` in ``directory``; P-256, valid 2 days."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
