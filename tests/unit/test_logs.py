"""gateway.logs: JSON lines, masking, the rejection rate limit (no I/O beyond a list handler)."""

from __future__ import annotations

import json
import logging

from gateway.logs import JsonFormatter, RejectLog, mask
from policy.decision import reject


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _logger() -> tuple[logging.Logger, _Keep]:
    lg = logging.getLogger("test.rejects")
    lg.handlers[:] = [keep := _Keep()]
    lg.setLevel(logging.INFO)
    lg.propagate = False
    return lg, keep


def test_mask_keeps_the_last_digits_and_the_shape() -> None:
    assert mask("+8613812345678", 4) == "+*********5678"
    assert mask("+8613812345678", -1) == "+8613812345678"
    assert mask("95500", 0) == "*****"
    assert mask(None, 4) is None


def test_reject_line_is_json_with_reason_and_masked_numbers() -> None:
    lg, keep = _logger()
    d = reject("consent_unknown", trunk_id="T1", enterprise_id="E1", caller="+8695500", callee="+8613812345678")
    assert RejectLog(lg, 10, 4).reject(d, "rid-1", 100.0)
    line = json.loads(JsonFormatter().format(keep.records[0]))
    assert line["msg"] == "reject" and line["reason"] == "consent_unknown" and line["sip_code"] == 608
    assert line["callee"] == "+*********5678" and line["record"] == "rid-1" and line["trunk"] == "T1"


def test_flood_is_rate_limited_and_the_suppressed_count_logged() -> None:
    lg, keep = _logger()
    rl = RejectLog(lg, 5, -1)
    d = reject("callee_dnc", callee="+8613800000000")
    passed = sum(rl.reject(d, f"r{i}", 1000.5) for i in range(1000))
    assert passed == 5 and rl.suppressed == 995
    rl.reject(d, "next", 1001.1)
    summary = [r for r in keep.records if r.getMessage().startswith("rejection lines suppressed")]
    assert len(summary) == 1 and summary[0].fields == {"suppressed": 995}  # type: ignore[attr-defined]
    assert rl.suppressed_total == 995


def test_control_characters_from_a_message_cannot_break_the_line() -> None:
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "reject", None, None)
    rec.fields = {"trunk": "a\r\nFAKE: line\x00"}
    text = JsonFormatter().format(rec)
    assert "\n" not in text and "\r" not in text and json.loads(text)["trunk"] == "a\r\nFAKE: line\x00"
