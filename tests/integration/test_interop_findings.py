"""Issue 15 findings that live on the sockets, against the real gateway process.

The next hop is a plain UDP socket owned by the test (it sees exactly what
the gateway sends, probes included) and the caller a UDP or TCP socket, so
each test shows one thing on the wire. Each was a strict xfail until its
finding was fixed (all are now). The core-level twins are in
tests/unit/proxy/test_interop_findings.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peers import free_port
from tests.integration.harness import GatewayProc, raw_invite, standard_policy

pytestmark = pytest.mark.integration

CALLEE = "+8613800000000"


class Hop:
    """A next hop that is a bare UDP socket: answers OPTIONS with ``probe_status``, records the rest."""

    def __init__(self, probe_status: int = 200) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.probe_status = probe_status

    def pump(self, wait: float, until: bytes | None = None) -> list[tuple[bytes, tuple[str, int]]]:
        """Receive for up to ``wait`` s (answering probes); stop early at a message starting with ``until``."""
        out = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                break
            if data.startswith(b"OPTIONS "):
                self.sock.sendto(_response(data, self.probe_status, "Probe"), addr)
                continue
            out.append((data, addr))
            if until is not None and data.startswith(until):
                break
        return out

    def close(self) -> None:
        self.sock.close()


def _headers(data: bytes) -> list[tuple[str, str]]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in head)]


def _all(data: bytes, name: str) -> list[str]:
    return [v for n, v in _headers(data) if n.lower() == name.lower()]


def _response(req: bytes, status: int, phrase: str, *, to_tag: str = "", rr: bool = False) -> bytes:
    lines = [f"SIP/2.0 {status} {phrase}"]
    lines += [f"Via: {v}" for v in _all(req, "Via")]
    if rr:
        lines += [f"Record-Route: {v}" for v in _all(req, "Record-Route")]
    to = _all(req, "To")[0] + (f";tag={to_tag}" if to_tag else "")
    lines += [f"From: {_all(req, 'From')[0]}", f"To: {to}", f"Call-ID: {_all(req, 'Call-ID')[0]}",
              f"CSeq: {_all(req, 'CSeq')[0]}"]
    if to_tag:
        lines.append("Contact: <sip:callee@127.0.0.1>")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def _param(value: str, name: str) -> str | None:
    for p in value.split(";")[1:]:
        k, _, v = p.partition("=")
        if k.strip().lower() == name:
            return v.strip()
    return None


@pytest.fixture
def hop() -> Iterator[Hop]:
    h = Hop()
    yield h
    h.close()


@pytest.fixture
def gw(tmp_path: Path, redis_url: str, hop: Hop) -> Iterator[GatewayProc]:
    standard_policy(redis_url, callees=1)
    g = GatewayProc(redis_url, tmp_path / "gw", [f"udp:127.0.0.1:{hop.port}"], extra=["--shadow"])
    g.start()
    yield g
    g.stop()


def _tcp_invite(gw: GatewayProc, sent_by: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), 2)
    inv = raw_invite(0, gw.port, caller="95500", callee=CALLEE, token="tok-0",
                     call_id=f"i15-tcp-{time.monotonic_ns()}@test", branch="z9hG4bK-i15-tcp")
    inv = inv.replace(b"SIP/2.0/UDP 127.0.0.1:0;", f"SIP/2.0/TCP {sent_by};".encode(), 1)
    s.sendall(inv)
    return s


def test_received_on_a_tcp_callers_via(gw: GatewayProc, hop: Hop) -> None:
    s = _tcp_invite(gw, "127.0.0.2:25064")
    try:
        got = hop.pump(5.0, until=b"INVITE ")
        invites = [d for d, _ in got if d.startswith(b"INVITE ")]
        assert invites, "the INVITE reached the next hop"
        caller_via = _all(invites[0], "Via")[1]
        assert _param(caller_via, "received") == "127.0.0.1", caller_via
    finally:
        s.close()


def test_rport_filled_on_a_tcp_callers_via(gw: GatewayProc, hop: Hop) -> None:
    s = _tcp_invite(gw, "127.0.0.2:25064")
    try:
        port = s.getsockname()[1]
        got = hop.pump(5.0, until=b"INVITE ")
        invites = [d for d, _ in got if d.startswith(b"INVITE ")]
        assert invites, "the INVITE reached the next hop"
        caller_via = _all(invites[0], "Via")[1]
        assert _param(caller_via, "rport") == str(port), caller_via
    finally:
        s.close()


def test_request_towards_the_trunk_leaves_from_the_listen_port(gw: GatewayProc, hop: Hop) -> None:
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    port = caller.getsockname()[1]
    try:
        caller.sendto(raw_invite(port, gw.port, caller="95500", callee=CALLEE, token="tok-0",
                                 call_id=f"i15-udp-{time.monotonic_ns()}@test", branch="z9hG4bK-i15-udp"),
                      ("127.0.0.1", gw.port))
        got = hop.pump(5.0, until=b"INVITE ")
        inv, gw_side = next((d, a) for d, a in got if d.startswith(b"INVITE "))
        hop.sock.sendto(_response(inv, 200, "OK", to_tag="callee-1", rr=True), gw_side)
        # The callee hangs up: BYE to the gateway with the Record-Route as its Route.
        rr = _all(inv, "Record-Route")
        bye = "\r\n".join([
            f"BYE sip:caller@127.0.0.1:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{hop.port};branch=z9hG4bK-i15-bye;rport",
            *[f"Route: {r}" for r in rr],
            f"From: {_all(inv, 'To')[0]};tag=callee-1",
            f"To: {_all(inv, 'From')[0]}",
            f"Call-ID: {_all(inv, 'Call-ID')[0]}",
            "CSeq: 1 BYE",
            "Max-Forwards: 70",
            "Content-Length: 0", "", "",
        ]).encode()
        hop.sock.sendto(bye, ("127.0.0.1", gw.port))
        deadline = time.monotonic() + 5
        got_bye: tuple[bytes, tuple[str, int]] | None = None
        while time.monotonic() < deadline and got_bye is None:
            caller.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, addr = caller.recvfrom(65535)
            except TimeoutError:
                break
            if data.startswith(b"BYE "):
                got_bye = (data, addr)
        assert got_bye is not None, "the callee's BYE reached the caller"
        data, addr = got_bye
        assert addr == ("127.0.0.1", gw.port), addr
        assert f"127.0.0.1:{gw.port};" in _all(data, "Via")[0]
    finally:
        caller.close()


def test_udp_crlf_keepalives_are_not_malformed(gw: GatewayProc) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", free_port()))
        for _ in range(3):
            s.sendto(b"\r\n\r\n", ("127.0.0.1", gw.port))
    time.sleep(1.5)  # workers flush their counters about once a second
    assert gw.metric("cag_messages_dropped_total", reason="malformed") == 0


def test_probe_503_keeps_the_hop_down(tmp_path: Path, redis_url: str) -> None:
    sick = Hop(probe_status=503)
    standard_policy(redis_url, callees=1)
    g = GatewayProc(redis_url, tmp_path / "gw", [f"udp:127.0.0.1:{sick.port}"], extra=["--shadow"])
    try:
        g.start(wait_ready=False)
        sick.pump(3.0)  # several probe rounds (CAG_PROBE_INTERVAL 0.5 s), each answered 503
        assert g.metric("cag_next_hop_up") == 0
    finally:
        g.stop()
        sick.close()


def test_silent_hop_is_down(tmp_path: Path, redis_url: str) -> None:
    """Baseline (works today): a hop that never answers its probes is down."""
    mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mute.bind(("127.0.0.1", 0))
    standard_policy(redis_url, callees=1)
    g = GatewayProc(redis_url, tmp_path / "gw", [f"udp:127.0.0.1:{mute.getsockname()[1]}"], extra=["--shadow"])
    try:
        g.start(wait_ready=False)
        time.sleep(3.0)
        assert g.metric("cag_next_hop_up") == 0
    finally:
        g.stop()
        mute.close()


def test_torture_corpus_leaves_every_worker_serving(gw: GatewayProc, hop: Hop) -> None:
    """All 49 RFC 4475 messages over UDP, twice (both workers see them), then calls still go through."""
    corpus = sorted((Path(__file__).resolve().parents[1] / "data" / "rfc4475").glob("*.dat"))
    assert len(corpus) == 49
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        for _ in range(2):
            for p in corpus:
                s.sendto(p.read_bytes(), ("127.0.0.1", gw.port))
        port = s.getsockname()[1]
        for n in range(4):  # several calls: SO_REUSEPORT spreads them over the workers
            s.sendto(raw_invite(port, gw.port, caller="95500", callee=CALLEE, token="tok-0",
                                call_id=f"i15-after-{n}-{time.monotonic_ns()}@test", branch=f"z9hG4bK-after-{n}"),
                     ("127.0.0.1", gw.port))
    got = [d for d, _ in hop.pump(4.0) if d.startswith(b"INVITE ") and b"i15-after-" in d]
    call_ids = {_all(d, "Call-ID")[0] for d in got}
    assert len(call_ids) == 4, call_ids
    assert gw.http("/readyz")[0] == 200
    assert gw.metric("cag_proxy_events_total", event="internal_error") == 0
