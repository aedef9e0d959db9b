"""Real user agents through the real gateway: baresip as caller and callee on loopback (issue 15).

The gateway runs in shadow mode (decide and record, forward every call) with
the standard policy world: baresip cannot add the consent token header, and
what is under test here is the SIP path, not the policy. The caller is the
filed number 95500, the callee the numeric user +8613800000000 (a
non-numeric user is finding 8, tested in tests/unit/policy). No
registration: the caller dials ``sip:+8613800000000@127.0.0.1:GW`` and the
gateway's next hop is the callee's listen address. Each scenario is bounded
at about 15 s; the UA's SIP trace (``-s``) is in its log for the asserts
that need the wire.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import GatewayProc, standard_policy
from tests.integration.ua import BARESIP, Baresip

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (scripts/setup.sh installs it)"),
]

CALLER = "95500"
CALLEE = "+8613800000000"


class World:
    def __init__(
        self, tmp: Path, redis_url: str, *, callee_answers: bool = True, callee_host: str = "127.0.0.1"
    ) -> None:
        standard_policy(redis_url, callees=1)
        self.callee = Baresip(tmp / "callee", CALLEE, answer=callee_answers, host=callee_host)
        self.caller = Baresip(tmp / "caller", CALLER, answer=False)
        self.gw = GatewayProc(redis_url, tmp / "gw", [f"udp:{callee_host}:{self.callee.port}"], extra=["--shadow"])
        try:
            self.callee.start()
            self.caller.start()
            self.gw.start()
        except BaseException:
            self.stop()
            raise

    def dial(self, transport: str = "udp") -> None:
        uri = f"sip:{CALLEE}@127.0.0.1:{self.gw.port}"
        if transport != "udp":
            uri += f";transport={transport}"
        assert self.caller.command("dial", uri)["ok"], self.caller.log_tail()

    def established(self) -> None:
        self.callee.wait_event("CALL_ESTABLISHED")
        self.caller.wait_event("CALL_ESTABLISHED")

    def stop(self) -> None:
        for ua in (self.caller, self.callee):
            ua.stop()
        self.gw.stop()

    def diagnostics(self) -> str:
        return (
            f"--- caller\n{self.caller.log_tail(3000)}\n--- callee\n{self.callee.log_tail(3000)}\n"
            f"--- gateway\n{self.gw.log_tail(2000)}"
        )


@pytest.fixture
def world(tmp_path: Path, redis_url: str) -> Iterator[World]:
    w = World(tmp_path, redis_url)
    yield w
    w.stop()


@pytest.fixture
def world_manual(tmp_path: Path, redis_url: str) -> Iterator[World]:
    w = World(tmp_path, redis_url, callee_answers=False)
    yield w
    w.stop()


def _received(ua: Baresip, start_line: str) -> bool:
    return bool(ua.received(start_line))


def test_udp_call_caller_hangs_up(world: World) -> None:
    world.dial()
    world.established()
    time.sleep(0.5)
    assert world.caller.command("hangup")["ok"]
    world.callee.wait_event("CALL_CLOSED")
    world.caller.wait_event("CALL_CLOSED")
    assert _received(world.callee, "BYE sip:"), world.diagnostics()


def test_udp_call_callee_hangs_up(world: World) -> None:
    world.dial()
    world.established()
    time.sleep(0.5)
    assert world.callee.command("hangup")["ok"]
    world.caller.wait_event("CALL_CLOSED")
    world.callee.wait_event("CALL_CLOSED")
    assert _received(world.caller, "BYE sip:"), world.diagnostics()


def test_udp_reinvite_hold_and_resume_both_ways(world: World) -> None:
    world.dial()
    world.established()
    time.sleep(0.3)
    for ua, peer in ((world.caller, world.callee), (world.callee, world.caller)):
        before = len(peer.received("INVITE sip:"))
        for cmd in ("hold", "resume"):
            n = len(peer.received("INVITE sip:"))
            assert ua.command(cmd)["ok"], world.diagnostics()
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and len(peer.received("INVITE sip:")) == n:
                time.sleep(0.1)
            time.sleep(0.4)  # the 200 and the ACK
        assert len(peer.received("INVITE sip:")) == before + 2, world.diagnostics()
    # Every re-INVITE was answered 200 through the gateway; no error reached either side.
    for ua in (world.caller, world.callee):
        assert not ua.received("SIP/2.0 4") and not ua.received("SIP/2.0 5"), world.diagnostics()
    assert len(world.callee.received("SIP/2.0 200")) >= 2 and len(world.caller.received("SIP/2.0 200")) >= 3
    assert not world.caller.has_event("CALL_CLOSED") and not world.callee.has_event("CALL_CLOSED")
    assert world.caller.command("hangup")["ok"]
    world.callee.wait_event("CALL_CLOSED")


def test_udp_cancel_gives_487(world_manual: World) -> None:
    w = world_manual
    w.dial()
    w.callee.wait_event("CALL_INCOMING")
    time.sleep(0.5)
    assert w.caller.command("hangup")["ok"]
    w.callee.wait_event("CALL_CLOSED")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _received(w.caller, "SIP/2.0 487"):
        time.sleep(0.1)
    assert _received(w.callee, "CANCEL sip:"), w.diagnostics()
    assert _received(w.caller, "SIP/2.0 487"), w.diagnostics()


@pytest.fixture
def world_node(tmp_path: Path, redis_url: str) -> Iterator[World]:
    """The callee (the carrier side) at 127.0.0.3: its TCP connections to the gateway come from 127.0.0.1."""
    w = World(tmp_path, redis_url, callee_host="127.0.0.3")
    yield w
    w.stop()


def test_tcp_caller_udp_callee_same_address(world: World) -> None:
    """Works today: caller over TCP, callee over UDP, both on 127.0.0.1 (the hop address)."""
    world.dial("tcp")
    world.established()
    time.sleep(0.3)
    assert world.callee.command("hold")["ok"]
    time.sleep(1.0)
    assert world.callee.command("hangup")["ok"]
    world.caller.wait_event("CALL_CLOSED", timeout=5)
    assert world.caller.received("BYE sip:", "tcp"), world.diagnostics()


def test_tcp_caller_udp_callee_reinvite_and_callee_bye(world_node: World) -> None:
    """Issue 15's set-up (finding 1, fixed): caller over TCP, callee over UDP at 127.0.0.3. The
    Record-Route is doubled (RFC 5658), so the callee reaches us over UDP, and the direction is
    read from the token's tag, not from the source address."""
    world = world_node
    world.dial("tcp")
    world.established()
    time.sleep(0.3)
    assert world.callee.command("hold")["ok"]
    time.sleep(1.0)
    assert world.callee.command("hangup")["ok"]
    world.callee.wait_event("CALL_CLOSED")
    # The BYE reached the caller: its call ended by the BYE, not by a timeout.
    world.caller.wait_event("CALL_CLOSED", timeout=5)
    assert _received(world.caller, "BYE sip:"), world.diagnostics()
    assert "SIP/2.0 481" not in world.callee.log_tail(400_000), world.diagnostics()


def test_udp_callee_rejects_and_the_caller_gets_it(world_manual: World) -> None:
    """The callee declines the ringing call: its final error is relayed to the caller, ACKed hop by hop."""
    w = world_manual
    w.dial()
    w.callee.wait_event("CALL_INCOMING")
    assert w.callee.command("hangup")["ok"]
    closed = w.caller.wait_event("CALL_CLOSED")
    assert str(closed.get("param", "")).startswith("486"), closed  # baresip declines with 486
    assert w.caller.received("SIP/2.0 486"), w.diagnostics()
    assert w.callee.received("ACK sip:"), w.diagnostics()
