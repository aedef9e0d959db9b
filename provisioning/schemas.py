"""The provisioning API's request and response bodies (SPEC §10), as FastAPI validates and documents them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

TOKEN_RE = r"^[A-Za-z0-9._~:@+=-]{1,128}$"

_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _sane(t: datetime) -> datetime:
    """Times far outside the service's life are typos (and overflow window arithmetic)."""
    if not _EARLIEST <= t < _LATEST:
        raise ValueError("must be between 2000 and 2200")
    return t


Time = Annotated[AwareDatetime, AfterValidator(_sane), Field(description="ISO 8601 with a zone")]
Text = Annotated[str, Field(min_length=1, max_length=256)]
Number = Annotated[str, Field(min_length=1, max_length=40, description="as `cag policy load` accepts; stored normalised")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ConsentIn(_Body):
    callee: Number
    purpose: Annotated[str, Field(min_length=1, max_length=64)]
    expires_at: Time
    evidence_ref: Annotated[str, Field(min_length=1, max_length=512)]
    token: Annotated[str | None, Field(pattern=TOKEN_RE)] = None
    granted_at: Time | None = None
    max_calls: Annotated[int | None, Field(ge=1, le=1_000_000_000)] = None
    enterprise_id: Annotated[str | None, Field(min_length=1, max_length=128,
                                               description="admin keys only: the enterprise consented to")] = None


class ConsentOut(BaseModel):
    token: str
    callee: str
    enterprise_id: str
    purpose: str
    granted_at: datetime
    expires_at: datetime | None
    max_calls: int | None
    evidence_ref: str
    revoked_at: datetime | None
    calls_used: int


class DncIn(_Body):
    number: Number
    scope: Literal["all", "commercial"] = "all"
    registered_at: Time | None = None


class DncOut(BaseModel):
    number: str
    scope: str
    registered_at: datetime | None


class ComplaintIn(_Body):
    callee: Number
    caller: Number
    reported_at: Time
    channel: Annotated[str, Field(min_length=1, max_length=32, description="12321, carrier, or another source")]
    ref: Text


class TracedRecord(BaseModel):
    record_id: str | None
    time: str | None
    call_id: str | None = None
    enterprise_id: str | None
    decision: str | None = None
    reason: str | None = None
    consent_token: str | None
    evidence_ref: str | None


class ComplaintOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    complaint_id: str
    callee: str
    caller: str
    reported_at: str
    channel: str
    ref: str
    filed_at: str
    enterprise_id: str | None
    records: list[TracedRecord]
    actions: list[str] = Field(description="consent_withdrawn, enterprise_suspended")
    withdrawn_tokens: list[str] = []


class ExplainIn(_Body):
    source: Annotated[str, Field(min_length=1, max_length=64, description="source IP of the INVITE (IP or IP:PORT)")]
    caller: Annotated[str, Field(min_length=1, max_length=64)]
    callee: Annotated[str, Field(min_length=1, max_length=64)]
    token: Annotated[str | None, Field(max_length=256)] = None
    purpose: Annotated[str | None, Field(max_length=64)] = None
    at: Time | None = None
    pai: Annotated[str | None, Field(max_length=64)] = None
    privacy: bool = False
    identity: Annotated[str | None, Field(max_length=8192)] = None
