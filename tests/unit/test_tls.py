"""gateway/tls.py: the contexts built from the files, TLS 1.2 at least, reload keeping the old on failure."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.proxy import NextHop
from gateway.tls import TlsContexts, advertised_tls, wanted
from tests.tlscert import make_cert


def _settings(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    cert, key = make_cert(tmp_path)
    base: dict[str, object] = {
        "listen": ["udp:127.0.0.1:5060", "tls:0.0.0.0:5061"],
        "tls_cert_file": str(cert),
        "tls_key_file": str(key),
        "tls_ca_file": str(cert),
    }
    base.update(kw)
    return load_settings(**base)


def _served_cn(server: ssl.SSLContext, ca: Path) -> tuple[str, str]:
    """Handshake over a socketpair; the CN of the certificate the server showed, and the version."""
    a, b = socket.socketpair()
    client = ssl.create_default_context(cafile=str(ca))
    client.check_hostname = False
    out: dict[str, object] = {}

    def serve() -> None:
        with server.wrap_socket(a, server_side=True) as s:
            out["v"] = s.version()

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(b) as c:
        cert = c.getpeercert()
    t.join(5)
    cn = dict(x[0] for x in cert["subject"])["commonName"]
    return str(cn), str(out.get("v"))


def test_contexts_tls12_at_least_and_hops_verified(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert wanted(s)
    tls = TlsContexts(s)
    assert tls.server is not None
    assert tls.server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.client.verify_mode == ssl.CERT_REQUIRED and tls.client.check_hostname
    assert tls.server.verify_mode == ssl.CERT_NONE  # no client certificate asked for by default
    assert advertised_tls(s, "192.0.2.1") == ("192.0.2.1", 5061)
    cn, version = _served_cn(tls.server, tmp_path / "cert.pem")
    assert cn == "cag-test" and version in ("TLSv1.2", "TLSv1.3")


def test_verify_client_requires_a_certificate(tmp_path: Path) -> None:
    tls = TlsContexts(_settings(tmp_path, tls_verify_client=True))
    assert tls.server is not None and tls.server.verify_mode == ssl.CERT_REQUIRED


def test_no_hop_verification_when_turned_off(tmp_path: Path) -> None:
    tls = TlsContexts(_settings(tmp_path, tls_verify_hop=False))
    assert tls.client.verify_mode == ssl.CERT_NONE and not tls.client.check_hostname


def test_reload_takes_the_new_certificate_and_keeps_the_old_on_a_bad_file(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    tls = TlsContexts(s)
    assert tls.server is not None
    make_cert(tmp_path, cn="cag-renewed")  # same file names: the renewal an operator does
    assert tls.reload()
    assert _served_cn(tls.server, tmp_path / "cert.pem")[0] == "cag-renewed"
    (tmp_path / "cert.key").write_text("not a key")
    assert not tls.reload()
    assert _served_cn(tls.server, tmp_path / "cert.pem")[0] == "cag-renewed"


def test_missing_files_fail_at_once(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    (tmp_path / "cert.pem").unlink()
    with pytest.raises(OSError):
        TlsContexts(s)


def test_tls_next_hop_parses() -> None:
    assert NextHop.parse("tls:10.0.0.9:5061;weight=3") == NextHop("10.0.0.9", 5061, "tls", 3)
    assert str(NextHop.parse("TLS:[::1]:5061")) == "tls:::1:5061;weight=1"


def test_fingerprint_matches_the_stored_form_of_the_openssl_output(tmp_path: Path) -> None:
    """``openssl x509 -fingerprint -sha256`` output, plain hex and the handshake's DER all compare equal."""
    import subprocess

    from gateway.tls import fingerprint
    from policy.model import Trunk, normalize_fingerprint

    cert, _ = make_cert(tmp_path)
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()  # "sha256 Fingerprint=AB:CD:…" (the label's case varies by openssl version)
    computed = fingerprint(ssl.PEM_cert_to_DER_cert(cert.read_text()))
    assert normalize_fingerprint(out) == computed
    hexed = out.split("=", 1)[1].replace(":", "").lower()
    assert normalize_fingerprint(hexed) == computed
    # The CSV cell: space-separated like ``sources``; empty means address only.
    t = Trunk.model_validate(
        {
            "trunk_id": "T",
            "enterprise_id": "E",
            "sources": "10.0.0.1",
            "tls_fingerprints": f"{hexed} {out.split('=', 1)[1]}",
        }
    )
    assert t.tls_fingerprints == (computed, computed)
    assert (
        Trunk.model_validate(
            {"trunk_id": "T", "enterprise_id": "E", "sources": "10.0.0.1"}
        ).tls_fingerprints
        == ()
    )


def test_bad_fingerprint_is_a_clear_row_error() -> None:
    from policy.loader import RowError, validate_row

    with pytest.raises(RowError) as e:
        validate_row(
            "trunks",
            {
                "trunk_id": "T",
                "enterprise_id": "E",
                "sources": "10.0.0.1",
                "tls_fingerprints": "AB:CD",
            },
        )
    assert "tls_fingerprints" in str(e.value) and "SHA-256" in str(e.value)


def test_trunk_cert_check() -> None:
    from gateway.tls import TrunkCertCheck, fingerprint

    der_a, der_b = b"certificate a", b"certificate b"
    pins = {"10.0.0.1": (fingerprint(der_a),)}
    events: list[str] = []
    check = TrunkCertCheck(lambda ip: pins.get(ip, ()), events.append)
    assert check("10.0.0.1", der_a)
    assert not check("10.0.0.1", der_b)
    assert not check("10.0.0.1", None)  # no certificate shown (tls_verify_client off)
    assert check("10.0.0.2", der_b) and check(
        "10.0.0.2", None
    )  # trunk without fingerprints / unknown
    assert events == [TrunkCertCheck.EVENT, TrunkCertCheck.EVENT]
