"""Issue 15 finding 8: a syntactically valid INVITE to a non-numeric user is not "malformed".

400 is for bad syntax. A Request-URI user that is no dialable number gets its
own reason code (``callee_invalid``), answered 404 (or 484), decided like any
other check: audited and shadow-able.
"""

from __future__ import annotations

import pytest

from policy.decision import REASON_CODES, Decision
from policy.rules import RuleConfig, evaluate_local, finish
from tests.unit.policy._fixtures import NOON, REF, call


def _decide(callee: str) -> Decision:
    c = call(callee=callee)
    local = evaluate_local(c, REF, NOON, RuleConfig())
    assert local.failed is not None
    return finish(c, local, None, RuleConfig())


@pytest.mark.parametrize("callee", ["alice", "vivekg", "sips%3Auser%40example.com"])
def test_non_numeric_callee_is_not_malformed(callee: str) -> None:
    d = _decide(callee)
    assert not d.admit
    assert d.reason == "callee_invalid"
    assert d.sip_code in (404, 484)


def test_callee_invalid_is_a_reason_code() -> None:
    assert "callee_invalid" in REASON_CODES
