"""``Check``, ``Decision`` and the proxy actions: immutable values that are cheap to build.

They stopped being ``frozen=True`` dataclasses (mypyc leaves a frozen
dataclass's ``__init__`` as slow generated Python; docs/perf-objects-2026-12-07.md).
These tests pin what ``frozen`` gave and the code relies on: equality, hashing
(``Check``/``Decision``), ``repr``, ``dataclasses.replace`` (shadow mode,
``explain``), keyword construction, and read-only fields in the compiled build
(mypy rejects an assignment to a ``Final`` field in both builds).
"""

from __future__ import annotations

import dataclasses
import sys

import pytest

from gateway import native
from gateway.proxy.actions import Admit, Outcome, Refused, Release, Send
from policy.decision import Check, Decision, admitted, reject
from policy.model import CallAttempt


def _compiled(module: str) -> bool:
    return native.compiled_modules().get(module, False) and module in sys.modules


def test_check_is_a_value() -> None:
    a = Check("quiet_hours", "fail", "quiet_hours", "21:00-08:00", 60)
    b = Check(
        name="quiet_hours",
        outcome="fail",
        reason="quiet_hours",
        detail="21:00-08:00",
        retry_after=60,
    )
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != Check("quiet_hours", "pass")
    assert Check("x", "pass") == Check("x", "pass", None, "", None)  # the defaults
    assert repr(a) == (
        "Check(name='quiet_hours', outcome='fail', reason='quiet_hours', detail='21:00-08:00', retry_after=60)"
    )
    assert [f.name for f in dataclasses.fields(Check)] == [
        "name",
        "outcome",
        "reason",
        "detail",
        "retry_after",
    ]


def test_decision_is_a_value_and_replace_keeps_every_field() -> None:
    checks = (Check("trunk", "pass"), Check("consent", "fail", "consent_missing"))
    d = reject(
        "consent_missing",
        checks=checks,
        trunk_id="t1",
        enterprise_id="e1",
        caller="+1",
        callee="+2",
    )
    assert d == reject(
        "consent_missing",
        checks=checks,
        trunk_id="t1",
        enterprise_id="e1",
        caller="+1",
        callee="+2",
    )
    assert hash(d) == hash(dataclasses.replace(d))
    assert (d.admit, d.reason, d.sip_code, d.decision, d.checks) == (
        False,
        "consent_missing",
        608,
        "reject",
        checks,
    )
    s = dataclasses.replace(d, admit=True, reason="admitted", sip_code=0, shadow_reject=d.reason)
    assert (s.admit, s.reason, s.sip_code, s.shadow_reject, s.decision) == (
        True,
        "admitted",
        0,
        "consent_missing",
        "admit",
    )
    assert (s.trunk_id, s.enterprise_id, s.caller, s.callee, s.checks) == (
        "t1",
        "e1",
        "+1",
        "+2",
        checks,
    )
    assert d.shadow_reject is None  # replace built a new one
    a = admitted(trunk_id="t1", fail_open=True)
    assert a == Decision(True, "admitted", 0, trunk_id="t1", fail_open=True)
    assert repr(a).startswith(
        "Decision(admit=True, reason='admitted', sip_code=0, retry_after=None, checks=()"
    )
    assert [f.name for f in dataclasses.fields(Decision)][-2:] == ["fail_open", "shadow_reject"]


def test_actions_are_values() -> None:
    call = CallAttempt("c1", "z9hG4bK1", "10.0.0.1", 5060, "+2", "+1", None)
    assert Send(b"x", ("10.0.0.2", 5060), "udp") == Send(
        b"x", ("10.0.0.2", 5060), "udp", None, False
    )
    assert Send(b"x", ("h", 1), "tcp", conn_id=3, private=True).conn_id == 3
    assert Admit("k", call, "r1") == Admit(key="k", call=call, record_id="r1")
    d = reject("malformed")
    assert Refused(call, "r1", d).decision is d
    assert Release("t1", "c1") == Release(trunk_id="t1", call_id="c1")
    o = Outcome("r1", "c1", 200, 1.0, None)
    assert (o.record_id, o.call_id, o.final_code, o.answered_at, o.ended_at) == (
        "r1",
        "c1",
        200,
        1.0,
        None,
    )
    assert repr(Release("t1", "c1")) == "Release(trunk_id='t1', call_id='c1')"


@pytest.mark.parametrize(
    ("module", "value", "field"),
    [
        ("policy.decision", Check("x", "pass"), "outcome"),
        ("policy.decision", admitted(), "admit"),
        ("gateway.proxy.actions", Send(b"x", ("h", 1), "udp"), "data"),
        ("gateway.proxy.actions", Release("t", "c"), "call_id"),
    ],
)
def test_fields_are_read_only_in_the_compiled_build(module: str, value: object, field: str) -> None:
    """What ``frozen=True`` guarded at run time; the pure build relies on mypy's ``Final`` check."""
    if not _compiled(module):
        pytest.skip(f"{module} runs from its .py (pure build): mypy guards the Final fields")
    with pytest.raises(AttributeError):
        setattr(value, field, getattr(value, field))
