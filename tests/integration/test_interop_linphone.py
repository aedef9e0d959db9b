"""linphonec (linphone-cli) as the caller, baresip as the callee, through the real gateway (issue 15).

The issue's own set-up over UDP, where every dialog scenario works. linphone
over TCP is not here: linphonec (Debian 5.1) opens only a UDP listening
point when driven headless (its ``ports sip N`` command sets the UDP port;
the configuration file's ports are not applied while it believes the
network unreachable), so a TCP call cannot be placed from it; finding 1 is
reproduced with baresip as the TCP caller (test_interop_ua.py). As in
test_interop_ua.py the gateway runs in shadow mode with the standard policy
world (no consent header from a stock UA).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import GatewayProc, standard_policy
from tests.integration.ua import BARESIP, LINPHONEC, Baresip, Linphonec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (scripts/setup.sh installs it)"),
    pytest.mark.skipif(LINPHONEC is None, reason="linphonec is not installed (scripts/setup.sh installs it)"),
]

CALLEE = "+8613800000000"


class World:
    def __init__(self, tmp: Path, redis_url: str, callee_host: str = "127.0.0.1") -> None:
        standard_policy(redis_url, callees=1)
        self.callee = Baresip(tmp / "callee", CALLEE, host=callee_host)
        self.caller = Linphonec(tmp / "caller", "95500")
        self.gw = GatewayProc(redis_url, tmp / "gw", [f"udp:{callee_host}:{self.callee.port}"], extra=["--shadow"])
        try:
            self.callee.start()
            self.caller.start()
            self.gw.start()
        except BaseException:
            self.stop()
            raise

    def dial(self) -> None:
        self.caller.call(f"sip:{CALLEE}@127.0.0.1:{self.gw.port}")
        self.callee.wait_event("CALL_ESTABLISHED")
        self.caller.wait_connected()

    def stop(self) -> None:
        self.caller.stop()
        self.callee.stop()
        self.gw.stop()

    def diagnostics(self) -> str:
        return f"--- caller\n{self.caller.console()[-2000:]}\n--- callee\n{self.callee.log_tail(3000)}"


@pytest.fixture
def world(tmp_path: Path, redis_url: str) -> Iterator[World]:
    w = World(tmp_path, redis_url)
    yield w
    w.stop()


def test_linphone_udp_caller_hangs_up(world: World) -> None:
    world.dial()
    time.sleep(0.5)
    world.caller.command("terminate")
    world.callee.wait_event("CALL_CLOSED")
    world.caller.wait_ended()
    assert world.callee.received("BYE sip:"), world.diagnostics()


def test_linphone_udp_callee_hangs_up(world: World) -> None:
    world.dial()
    time.sleep(0.5)
    assert world.callee.command("hangup")["ok"]
    world.caller.wait_ended()


def test_linphone_udp_callee_hold_resume(world: World) -> None:
    world.dial()
    time.sleep(0.3)
    for cmd in ("hold", "resume"):
        assert world.callee.command(cmd)["ok"]
        time.sleep(0.8)
    # Both re-INVITEs were answered 200 through the gateway (baresip saw no error on them).
    assert len(world.callee.received("SIP/2.0 200")) >= 2, world.diagnostics()
    assert not world.callee.received("SIP/2.0 4") and not world.callee.received("SIP/2.0 5"), world.diagnostics()
    assert "Call 1 with" in world.caller.console() and " ended (" not in world.caller.console()
    world.caller.command("terminate")
    world.callee.wait_event("CALL_CLOSED")
