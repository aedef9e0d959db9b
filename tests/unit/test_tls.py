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
