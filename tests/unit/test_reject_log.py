"""``RejectLog`` through the threaded set-up: the lines the listener writes, and the rate limit."""

from __future__ import annotations

import json
import logging

import pytest

from gateway import logs
from policy.decision import reject


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("threaded", [True, False])
def test_written_lines_summary_and_masking(
    capfd: pytest.CaptureFixture[str], threaded: bool
) -> None:
    logs.setup("info", threaded=threaded)
    try:
        rl = logs.RejectLog(logging.getLogger("cag.worker.test"), 2, 4)
        d = reject(
            "callee_dnc",
            trunk_id="t-a",
            enterprise_id="ent",
            caller="01058001234",
            callee="+8613800138000",
        )
        assert [rl.reject(d, f"r{i}", 100.2) for i in range(5)] == [True, True, False, False, False]
        assert rl.reject(d, "r5", 101.0)
    finally:
        logs.shutdown()
        logs.setup("warning", threaded=False)
    lines = _lines(capfd.readouterr().err)
    rejects = [x for x in lines if x["msg"] == "reject"]
    assert [x["record"] for x in rejects] == ["r0", "r1", "r5"]
    assert rejects[0]["callee"] == "+*********8000" and rejects[0]["caller"] == "*******1234"
    assert rejects[0]["reason"] == "callee_dnc" and rejects[0]["logger"] == "cag.worker.test"
    assert [x["suppressed"] for x in lines if "suppressed" in x] == [3]


def test_nothing_is_built_below_info(capfd: pytest.CaptureFixture[str]) -> None:
    logs.setup("warning")
    try:
        rl = logs.RejectLog(logging.getLogger("cag.worker.test"), 0, -1)
        assert rl.reject(reject("callee_dnc"), "r0", 100.0)
    finally:
        logs.shutdown()
    assert not [x for x in _lines(capfd.readouterr().err) if x["msg"] == "reject"]
