"""RFC 4475 torture messages through the proxy core's public facade (``receive``).

Each message arrives over UDP from a known trunk; the ``core`` column of
tests/data/rfc4475/expected.csv says what must come out: the INVITE handed
to policy (``admit``), an answer with a given status and nothing forwarded,
or nothing at all for responses that match no transaction. Kept to
``make_core`` + ``receive`` / ``decided`` on purpose: the core's insides are
being split into modules.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gateway.proxy import Admit, Send
from policy.decision import Decision
from tests.unit.proxy._support import HOP1, TRUNK, first_line, hget, make_core, status_of

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc4475"

# Rows whose outcome is wrong today (column "finding"): strict xfail, so the fix flips them.
# Empty since issue 15 findings 4-7 and the §3.1.2.7 gap (ltgtruri) were fixed.
XFAIL: dict[str, str] = {}

ADMITTED = Decision(admit=True, reason="admitted", sip_code=0, trunk_id="T1", enterprise_id="E1")


def rows() -> list[dict[str, str]]:
    lines = [ln for ln in (DATA / "expected.csv").read_text().splitlines() if ln and not ln.startswith("#")]
    return list(csv.DictReader(lines))


def _cases() -> list[object]:
    out: list[object] = []
    for r in rows():
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[r["name"]])] if r["name"] in XFAIL else []
        out.append(pytest.param(r["name"], r["section"], r["core"], id=r["name"], marks=marks))
    return out


def outcome(actions: list[object]) -> str:
    """admit / answer:N / drop / something unexpected spelled out."""
    if any(isinstance(a, Admit) for a in actions):
        return "admit"
    sends = [a for a in actions if isinstance(a, Send)]
    if not sends:
        return "drop"
    if len(sends) == 1 and sends[0].dest == TRUNK and sends[0].data.startswith(b"SIP/2.0 "):
        return f"answer:{status_of(sends[0].data)}"
    return "other:" + "; ".join(f"{first_line(s.data)} -> {s.dest}" for s in sends)


def test_every_row_has_a_core_outcome() -> None:
    assert all(r["core"] for r in rows())
    assert set(XFAIL) == {r["name"] for r in rows() if r["finding"]}


@pytest.mark.parametrize(("name", "section", "expected"), _cases())
def test_core_outcome(name: str, section: str, expected: str) -> None:
    core = make_core()
    data = (DATA / f"{name}.dat").read_bytes()
    actions = core.receive(data, TRUNK, "udp", None, 0.0)
    got = outcome(list(actions))
    if expected == "escruri":
        # §3.1.2.11: reject it, or strip the escaped headers before it reaches a hop.
        if got == "admit":
            admit = next(a for a in actions if isinstance(a, Admit))
            fwd = [s for s in core.decided(admit.key, ADMITTED, 0.001) if isinstance(s, Send) and s.dest == HOP1]
            assert len(fwd) == 1
            assert "?" not in first_line(fwd[0].data), first_line(fwd[0].data)
            assert "%3C" not in first_line(fwd[0].data).upper()
        else:
            assert got == "answer:400", (name, section, got)
        return
    if expected.startswith("answer:"):
        allowed = {f"answer:{c}" for c in expected.removeprefix("answer:").split("|")}
        assert got in allowed, (name, section, got)
    else:
        assert got == expected, (name, section, got)


def test_bext01_unsupported_lists_only_the_proxy_require_tag() -> None:
    """§3.3.5 / RFC 3261 §16.3 step 5: 420 with Unsupported naming the Proxy-Require tag, not Require's."""
    core = make_core()
    actions = core.receive((DATA / "bext01.dat").read_bytes(), TRUNK, "udp", None, 0.0)
    sends = [a for a in actions if isinstance(a, Send)]
    assert len(sends) == 1 and status_of(sends[0].data) == 420
    unsupported = hget(sends[0].data, "Unsupported") or ""
    assert "noProxiesSupportThis" in unsupported
    assert "nothingSupportedHere" not in unsupported


def test_badinv01_never_reaches_policy_or_a_hop() -> None:
    """§3.1.2.1: a 400 from the core itself; the INVITE is neither admitted nor forwarded."""
    core = make_core()
    actions = core.receive((DATA / "badinv01.dat").read_bytes(), TRUNK, "udp", None, 0.0)
    assert not any(isinstance(a, Admit) for a in actions)
    assert outcome(list(actions)) == "answer:400"
