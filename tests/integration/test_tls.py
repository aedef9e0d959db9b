"""SIP over TLS against the real gateway process (issue 15 "To build").

Peers are Python ``ssl`` sockets the test drives message by message: Debian's
SIPp is built without TLS (no ``-t l1``; ``sipp -h`` lists u1/un/ui/t1/tn/s1/sn
only), so it cannot be the TLS peer here. Certificates are self-signed, made
per test with the ``openssl`` CLI (tests/tlscert.py), each its own trust anchor.

- a TLS caller and a UDP next hop: double Record-Route (udp facing the hop, tls
  facing the caller), the callee's BYE carried to the caller over a TLS
  connection the gateway opens (verifying the caller's certificate);
- a UDP caller and a TLS next hop: INVITE, probes and the hop's BYE over TLS;
- the certificate re-read on SIGHUP;
- ``tls_verify_client``: a trunk without a certificate is refused at the handshake.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peers import free_port
from tests.integration.harness import GatewayProc, standard_policy
from tests.integration.test_interop_findings import Hop, _all, _param, _response
from tests.integration.ua import BARESIP, Baresip
from tests.tlscert import make_cert

pytestmark = pytest.mark.integration

CALLEE = "+8613800000000"


def _read_msg(conn: ssl.SSLSocket, buf: bytearray, wait: float) -> bytes | None:
    """One SIP message (no body: Content-Length 0) from a TLS stream; None at timeout or close."""
    deadline = time.monotonic() + wait
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        conn.settimeout(left)
        try:
            chunk = conn.recv(65535)
        except (TimeoutError, ssl.SSLError, OSError):
            return None
        if not chunk:
            return None
        buf += chunk
        while buf.startswith(b"\r\n"):  # keep-alives
            del buf[:2]
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    return head + b"\r\n\r\n"


def _read_until(conn: ssl.SSLSocket, buf: bytearray, starts: bytes, wait: float = 5.0) -> bytes | None:
    """The first message starting with ``starts`` (others, e.g. 100 Trying, skipped)."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        got = _read_msg(conn, buf, left)
        if got is None or got.startswith(starts):
            return got
    return None


def _msg(first: str, headers: list[str]) -> bytes:
    return "\r\n".join([first, *headers, "Content-Length: 0", "", ""]).encode()


def _invite(transport: str, port: int, gw_port: int, call_id: str, contact: str) -> bytes:
    return _msg(
        f"INVITE sip:{CALLEE}@127.0.0.1:{gw_port};user=phone SIP/2.0",
        [
            f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK-tls-{call_id};rport",
            "From: <sip:95500@127.0.0.1;user=phone>;tag=caller-1",
            f"To: <sip:{CALLEE}@127.0.0.1:{gw_port};user=phone>",
            f"Call-ID: {call_id}",
            "CSeq: 1 INVITE",
            f"Contact: {contact}",
            "Max-Forwards: 70",
            "X-Consent-Token: tok-0",
        ],
    )


class TlsHop:
    """A next hop over TLS: answers OPTIONS 200 on the connection, queues everything else."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.got: queue.Queue[tuple[bytes, ssl.SSLSocket]] = queue.Queue()
        self.versions: list[str] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                conn = self.ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            self.versions.append(str(conn.version()))
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: ssl.SSLSocket) -> None:
        buf = bytearray()
        while not self._stop:
            data = _read_msg(conn, buf, 0.5)
            if data is None:
                if conn.fileno() < 0:
                    return
                continue
            if data.startswith(b"OPTIONS "):
                conn.sendall(_response(data, 200, "OK"))
            else:
                self.got.put((data, conn))

    def next(self, starts: bytes, wait: float = 5.0) -> tuple[bytes, ssl.SSLSocket]:
        deadline = time.monotonic() + wait
        while True:
            data, conn = self.got.get(timeout=max(0.01, deadline - time.monotonic()))
            if data.startswith(starts):
                return data, conn

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _client_ctx(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def _gateway(tmp_path: Path, redis_url: str, hop: str, cert: Path, key: Path, *extra: str) -> GatewayProc:
    standard_policy(redis_url, callees=1)
    tls_port = free_port(socket.SOCK_STREAM)
    g = GatewayProc(
        redis_url,
        tmp_path / "gw",
        [hop],
        extra=[
            "--shadow", "--listen", f"tls:127.0.0.1:{tls_port}", "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-file", str(cert), *extra,
        ],
    )
    g.tls_port = tls_port  # type: ignore[attr-defined]
    g.start()
    return g


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    return make_cert(tmp_path / "pki")


@pytest.fixture
def udp_hop() -> Iterator[Hop]:
    h = Hop()
    yield h
    h.close()


def test_tls_caller_udp_hop_both_directions(
    tmp_path: Path, redis_url: str, certs: tuple[Path, Path], udp_hop: Hop
) -> None:
    cert, key = certs
    g = _gateway(tmp_path, redis_url, f"udp:127.0.0.1:{udp_hop.port}", cert, key)
    tls_port: int = g.tls_port  # type: ignore[attr-defined]
    # The caller also listens for TLS: the callee's requests come to its Contact.
    callee_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    callee_side.load_cert_chain(str(cert), str(key))
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    cport = lsock.getsockname()[1]
    try:
        raw = socket.create_connection(("127.0.0.1", tls_port), 3)
        conn = _client_ctx(cert).wrap_socket(raw, server_hostname="127.0.0.1")
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
        local_port = conn.getsockname()[1]
        call_id = f"tls-in-{time.monotonic_ns()}@test"
        conn.sendall(_invite("TLS", cport, g.port, call_id, f"<sip:caller@127.0.0.1:{cport};transport=tls>"))
        inv, gw_side = next((d, a) for d, a in udp_hop.pump(5.0, until=b"INVITE ") if d.startswith(b"INVITE "))
        caller_via = _all(inv, "Via")[1]
        assert _param(caller_via, "received") == "127.0.0.1" and _param(caller_via, "rport") == str(local_port)
        rr = _all(inv, "Record-Route")
        assert len(rr) == 2, rr
        assert "transport=udp" in rr[0] and f":{g.port};" in rr[0]
        assert "transport=tls" in rr[1] and f":{tls_port};" in rr[1]
        # 200 from the callee reaches the caller on its TLS connection.
        udp_hop.sock.sendto(_response(inv, 200, "OK", to_tag="callee-1", rr=True), gw_side)
        buf = bytearray()
        ok = _read_until(conn, buf, b"SIP/2.0 200 ")
        assert ok is not None and ok.startswith(b"SIP/2.0 200 "), ok
        # The callee hangs up over UDP; the gateway opens a TLS connection to the caller's Contact.
        bye = _msg(
            f"BYE sip:caller@127.0.0.1:{cport};transport=tls SIP/2.0",
            [
                f"Via: SIP/2.0/UDP 127.0.0.1:{udp_hop.port};branch=z9hG4bK-tls-bye;rport",
                *[f"Route: {r}" for r in rr],
                f"From: {_all(inv, 'To')[0]};tag=callee-1",
                f"To: {_all(inv, 'From')[0]}",
                f"Call-ID: {call_id}",
                "CSeq: 1 BYE",
                "Max-Forwards: 70",
            ],
        )
        udp_hop.sock.sendto(bye, ("127.0.0.1", g.port))
        lsock.settimeout(5)
        back_raw, _ = lsock.accept()
        back = callee_side.wrap_socket(back_raw, server_side=True)
        got = _read_msg(back, bytearray(), 5.0)
        assert got is not None and got.startswith(b"BYE "), got
        assert _all(got, "Via")[0].startswith(f"SIP/2.0/TLS 127.0.0.1:{tls_port};"), _all(got, "Via")
        assert not _all(got, "Route")
        back.sendall(_response(got, 200, "OK"))
        done = [d for d, _ in udp_hop.pump(3.0, until=b"SIP/2.0 200") if d.startswith(b"SIP/2.0 200")]
        assert done, "the caller's 200 to the BYE reached the callee"
        conn.close()
        back.close()
    finally:
        lsock.close()
        g.stop()


def test_udp_caller_tls_hop(tmp_path: Path, redis_url: str, certs: tuple[Path, Path]) -> None:
    cert, key = certs
    hop = TlsHop(cert, key)
    g = _gateway(tmp_path, redis_url, f"tls:127.0.0.1:{hop.port}", cert, key)
    tls_port: int = g.tls_port  # type: ignore[attr-defined]
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    port = caller.getsockname()[1]
    try:
        assert g.metric("cag_next_hop_up") >= 1  # the OPTIONS probes went over TLS
        call_id = f"tls-out-{time.monotonic_ns()}@test"
        caller.sendto(_invite("UDP", port, g.port, call_id, f"<sip:caller@127.0.0.1:{port}>"), ("127.0.0.1", g.port))
        inv, hconn = hop.next(b"INVITE ")
        assert _all(inv, "Via")[0].startswith(f"SIP/2.0/TLS 127.0.0.1:{tls_port};")
        rr = _all(inv, "Record-Route")
        assert len(rr) == 2 and "transport=tls" in rr[0] and "transport=udp" in rr[1], rr
        hconn.sendall(_response(inv, 200, "OK", to_tag="callee-1", rr=True))
        caller.settimeout(5)
        while True:
            data, _ = caller.recvfrom(65535)
            if data.startswith(b"SIP/2.0 200 "):
                break
        # The callee's BYE on a TLS connection of its own to the Record-Route address.
        raw = socket.create_connection(("127.0.0.1", tls_port), 3)
        bconn = _client_ctx(cert).wrap_socket(raw, server_hostname="127.0.0.1")
        bconn.sendall(
            _msg(
                f"BYE sip:caller@127.0.0.1:{port} SIP/2.0",
                [
                    f"Via: SIP/2.0/TLS 127.0.0.1:{hop.port};branch=z9hG4bK-tls-bye2",
                    *[f"Route: {r}" for r in rr],
                    f"From: {_all(inv, 'To')[0]};tag=callee-1",
                    f"To: {_all(inv, 'From')[0]}",
                    f"Call-ID: {call_id}",
                    "CSeq: 1 BYE",
                    "Max-Forwards: 70",
                ],
            )
        )
        while True:
            data, addr = caller.recvfrom(65535)
            if data.startswith(b"BYE "):
                break
        assert addr == ("127.0.0.1", g.port)  # from the listen port (issue 15 #3)
        caller.sendto(_response(data, 200, "OK"), addr)
        # The 200 lands on whichever worker the kernel picks for the caller's datagram: the one
        # holding the BYE's connection writes it there; another opens a connection to the Via's
        # sent-by (RFC 3261 §18.2.2), which this hop also listens on.
        ok = _read_until(bconn, bytearray(), b"SIP/2.0 200 ", wait=2.0)
        if ok is None:
            ok, _ = hop.next(b"SIP/2.0 200 ", wait=3.0)
        assert ok.startswith(b"SIP/2.0 200 ") and b"CSeq: 1 BYE" in ok, ok
        bconn.close()
    finally:
        caller.close()
        g.stop()
        hop.close()


def _handshake_ok(port: int, ctx: ssl.SSLContext) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c:
                c.sendall(b"\r\n\r\n")  # a keep-alive: the server answers CRLF (RFC 5626 pong)
                c.settimeout(2)
                return c.recv(16) == b"\r\n"
    except (ssl.SSLError, OSError):
        return False


def test_certificate_reloaded_on_sighup(
    tmp_path: Path, redis_url: str, certs: tuple[Path, Path], udp_hop: Hop
) -> None:
    cert, key = certs
    g = _gateway(tmp_path, redis_url, f"udp:127.0.0.1:{udp_hop.port}", cert, key)
    tls_port: int = g.tls_port  # type: ignore[attr-defined]
    try:
        assert _handshake_ok(tls_port, _client_ctx(cert))
        new_cert, new_key = make_cert(tmp_path / "pki-new", cn="cag-renewed")
        # The operator replaces the files in place, then SIGHUP.
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        assert not _handshake_ok(tls_port, _client_ctx(new_cert))  # still the old one
        assert g.proc is not None
        os.kill(g.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _handshake_ok(tls_port, _client_ctx(new_cert)):
            time.sleep(0.2)
        # Every worker took it (connections land on either): several handshakes in a row.
        assert all(_handshake_ok(tls_port, _client_ctx(new_cert)) for _ in range(6))
    finally:
        g.stop()


def test_verify_client_refuses_a_trunk_without_a_certificate(
    tmp_path: Path, redis_url: str, certs: tuple[Path, Path], udp_hop: Hop
) -> None:
    cert, key = certs
    g = _gateway(tmp_path, redis_url, f"udp:127.0.0.1:{udp_hop.port}", cert, key, "--tls-verify-client")
    tls_port: int = g.tls_port  # type: ignore[attr-defined]
    try:
        assert not _handshake_ok(tls_port, _client_ctx(cert))
        assert _handshake_ok(tls_port, _client_ctx(cert, (cert, key)))
    finally:
        g.stop()


@pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (scripts/setup.sh installs it)")
def test_baresip_over_tls_both_ways(tmp_path: Path, redis_url: str, certs: tuple[Path, Path]) -> None:
    """Real UAs: baresip calls over TLS, the callee (baresip) is reached over TLS too; both hang-ups work."""
    cert, key = certs
    pem = tmp_path / "pki" / "baresip.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    callee = Baresip(tmp_path / "callee", CALLEE, tls_pem=pem)
    caller = Baresip(tmp_path / "caller", "95500", answer=False, tls_pem=pem)
    g: GatewayProc | None = None
    try:
        callee.start()
        caller.start()
        g = _gateway(tmp_path, redis_url, f"tls:127.0.0.1:{callee.port + 1}", cert, key)
        tls_port: int = g.tls_port  # type: ignore[attr-defined]
        for hanging_up in ("callee", "caller"):
            assert caller.command("dial", f"sip:{CALLEE}@127.0.0.1:{tls_port};transport=tls")["ok"]
            callee.wait_event("CALL_ESTABLISHED")
            caller.wait_event("CALL_ESTABLISHED")
            time.sleep(0.5)
            ua, peer = (callee, caller) if hanging_up == "callee" else (caller, callee)
            assert ua.command("hangup")["ok"]
            peer.wait_event("CALL_CLOSED", timeout=5)
            ua.wait_event("CALL_CLOSED", timeout=5)
            assert peer.received("BYE sip:", "tls"), (caller.log_tail(3000), callee.log_tail(3000), g.log_tail())
        assert callee.received("INVITE sip:", "tls") and not callee.received("INVITE sip:", "udp")
    finally:
        caller.stop()
        callee.stop()
        if g is not None:
            g.stop()


def test_untrusted_tls_hop_is_never_sent_to(tmp_path: Path, redis_url: str, certs: tuple[Path, Path]) -> None:
    """tls_verify_hop (the default): a hop whose certificate tls_ca_file does not vouch for gets nothing."""
    cert, key = certs
    stranger = TlsHop(*make_cert(tmp_path / "pki-other", cn="not-the-carrier"))
    standard_policy(redis_url, callees=1)
    tls_port = free_port(socket.SOCK_STREAM)
    g = GatewayProc(
        redis_url,
        tmp_path / "gw",
        [f"tls:127.0.0.1:{stranger.port}"],
        extra=[
            "--shadow", "--listen", f"tls:127.0.0.1:{tls_port}", "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-file", str(cert),
        ],
    )
    try:
        g.start(wait_ready=False)
        time.sleep(2.5)  # several probe rounds (CAG_PROBE_INTERVAL 0.5 s)
        assert g.metric("cag_proxy_events_total", event="tls_connect_failed") >= 1
        assert g.metric("cag_next_hop_up") == 0
        assert stranger.got.empty() and not stranger.versions  # no handshake completed, nothing sent
    finally:
        g.stop()
        stranger.close()
