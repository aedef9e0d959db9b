"""``ChangeLog.write``: audit records through a given pipeline; a failure is counted and logged, never raised.

A change is made before its record is written (the grant stage writes the
consents, then their records), so a record that cannot be written must not
turn a made change into an error answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from redis.exceptions import ConnectionError, ResponseError

from gateway.audit.record import unpack
from gateway.audit.sink import FIELD, STREAM
from provisioning.changes import ChangeLog


class _Pipe:
    def __init__(self, reply: Any = None, raises: Exception | None = None) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.reply, self.raises = reply, raises

    async def __call__(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        self.sent += commands
        if self.raises is not None:
            raise self.raises
        return [self.reply] * len(commands)


async def test_one_xadd_per_entry_through_the_pipeline() -> None:
    pipe = _Pipe(reply=b"1-0")
    log = ChangeLog(None, pipeline=pipe)
    entries = [log.entry("k1", "consent_grant", enterprise_id="E1", consent_token=f"t{i}") for i in range(3)]
    await log.write(entries)
    assert [c[:4] for c in pipe.sent] == [("XADD", STREAM, "*", FIELD)] * 3
    assert [unpack(c[4])["consent_token"] for c in pipe.sent] == ["t0", "t1", "t2"]
    assert log.failed == 0
    rid = await log.record("k1", "dnc_add", callee="+8613800138000")
    assert rid.startswith("api-") and len(pipe.sent) == 4


@pytest.mark.parametrize("pipe", [_Pipe(raises=ConnectionError("gone")), _Pipe(reply=ResponseError("OOM"))],
                         ids=["connection lost", "error reply"])
async def test_a_record_not_written_is_counted_not_raised(pipe: _Pipe, caplog: pytest.LogCaptureFixture) -> None:
    log = ChangeLog(None, pipeline=pipe)
    await log.write([log.entry("k1", "consent_grant"), log.entry("k1", "consent_grant")])
    assert log.failed == 2
    assert "not written" in caplog.text
