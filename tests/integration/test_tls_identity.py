"""A trunk identified by its TLS client certificate as well as its address (issue 15 "To build").

The trunk record's ``tls_fingerprints`` (CSV column, loaded with ``cag policy load
trunks``) pins the certificates a TLS connection from the trunk's sources must
show. Both client certificates here are in ``tls_ca_file``, so the handshake
verifies either: only the fingerprint tells the trunk's certificate from another
one the CA vouches for. Same gateway throughout: the trunk file is reloaded to
drop the fingerprints, and the connection from the other certificate is then
admitted again (address alone, as before), the lookup reading the current
reference snapshot.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peers import free_port
from gateway.cli import main as cag
from gateway.tls import fingerprint
from tests.integration.harness import GatewayProc, standard_policy
from tests.integration.test_interop_findings import Hop
from tests.integration.test_tls import _client_ctx, _invite
from tests.tlscert import make_cert

pytestmark = pytest.mark.integration

TRUNKS_HEADER = "trunk_id,enterprise_id,sources,max_cps,status,tls_fingerprints\n"


@pytest.fixture
def udp_hop() -> Iterator[Hop]:
    h = Hop()
    yield h
    h.close()


def _call(port: int, gw_port: int, ctx: ssl.SSLContext, hop: Hop, tag: str) -> bool:
    """One INVITE over a new TLS connection: True when it reached the next hop (the call admitted)."""
    call_id = f"tls-id-{tag}-{time.monotonic_ns()}@test"
    try:
        with socket.create_connection(("127.0.0.1", port), 3) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                local = conn.getsockname()[1]
                conn.sendall(
                    _invite(
                        "TLS",
                        local,
                        gw_port,
                        call_id,
                        f"<sip:caller@127.0.0.1:{local};transport=tls>",
                    )
                )
                got = hop.pump(3.0, until=b"INVITE ")
                return any(d.startswith(b"INVITE ") and call_id.encode() in d for d, _ in got)
    except (ssl.SSLError, OSError):  # the gateway reset the connection after the handshake
        return False


def _load_trunks(tmp_path: Path, redis_url: str, pins: str) -> None:
    csv = tmp_path / "trunks.csv"
    csv.write_text(TRUNKS_HEADER + f"T1,E1,127.0.0.0/8,0,active,{pins}\n", encoding="utf-8")
    assert cag(["policy", "load", "trunks", str(csv), "--redis-url", redis_url]) == 0


def test_trunk_identified_by_certificate_and_address(
    tmp_path: Path, redis_url: str, udp_hop: Hop, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_cert(tmp_path / "pki", cn="cag-gateway", name="server")
    trunk = make_cert(tmp_path / "pki", cn="trunk-t1", name="t1")
    other = make_cert(tmp_path / "pki", cn="someone-else", name="other")
    ca = tmp_path / "pki" / "clients.pem"
    ca.write_bytes(trunk[0].read_bytes() + other[0].read_bytes())
    pin = fingerprint(ssl.PEM_cert_to_DER_cert(trunk[0].read_text()))

    standard_policy(redis_url, callees=1)
    _load_trunks(tmp_path, redis_url, pin.replace(":", "").lower())  # plain hex is accepted too
    capsys.readouterr()
    assert cag(["policy", "show", "trunks", "T1", "--redis-url", redis_url]) == 0
    assert json.loads(capsys.readouterr().out)["tls_fingerprints"] == [pin]  # the openssl form
    tls_port = free_port(socket.SOCK_STREAM)
    g = GatewayProc(
        redis_url,
        tmp_path / "gw",
        [f"udp:127.0.0.1:{udp_hop.port}"],
        extra=[
            "--shadow",
            "--listen",
            f"tls:127.0.0.1:{tls_port}",
            "--tls-cert-file",
            str(server[0]),
            "--tls-key-file",
            str(server[1]),
            "--tls-ca-file",
            str(ca),
            "--tls-verify-client",
        ],
    )
    g.start()
    try:
        with_trunk_cert = _client_ctx(server[0], trunk)
        with_other_cert = _client_ctx(server[0], other)
        # Several connections each: the kernel spreads them over the workers.
        assert all(_call(tls_port, g.port, with_trunk_cert, udp_hop, f"ok{i}") for i in range(3))
        assert not any(
            _call(tls_port, g.port, with_other_cert, udp_hop, f"bad{i}") for i in range(3)
        )
        deadline = time.monotonic() + 5
        while (
            time.monotonic() < deadline
            and g.metric("cag_proxy_events_total", event="tls_peer_rejected") < 3
        ):
            time.sleep(0.2)
        assert g.metric("cag_proxy_events_total", event="tls_peer_rejected") == 3
        assert "closed: certificate" in g.log_tail(20000)

        # The trunk without fingerprints: address (and CA) alone, as before the column existed.
        _load_trunks(tmp_path, redis_url, "")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _call(
            tls_port, g.port, with_other_cert, udp_hop, "again"
        ):
            time.sleep(0.3)
        assert all(_call(tls_port, g.port, with_other_cert, udp_hop, f"now{i}") for i in range(3))
    finally:
        g.stop()
