"""The data the gateway decides on, as typed records (SPEC §4).

Reference data (trunks, enterprises, filings) and per-callee data (consents,
DNC) enter through CSV/JSONL files or the CLI, so they are pydantic models:
every row is validated at the edge and a bad cell becomes a clear message.
Inside the hot path the gateway uses the frozen dataclasses at the bottom of
this module (``CallAttempt``), which cost nothing to build.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TrunkStatus = Literal["active", "suspended"]
EnterpriseStatus = Literal["active", "suspended", "blacklisted"]
FilingStatus = Literal["active", "suspended", "revoked"]
DncScope = Literal["all", "commercial"]

DEFAULT_PURPOSES: tuple[str, ...] = ("callback", "consultation")

_WINDOW_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def _split_list(value: Any) -> Any:
    """CSV lists are space-separated (SPEC §9); JSONL may already give a list."""
    if isinstance(value, str):
        return value.split()
    return value


def _aware(value: datetime | None) -> datetime | None:
    """Naive times in files are taken as UTC so comparisons never mix kinds."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


_HEX64_RE = re.compile(r"[0-9a-f]{64}")


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 certificate fingerprint as ``openssl x509 -fingerprint -sha256`` prints it
    (``AA:BB:…``, upper case), from that form or plain hex, so a stored value compares
    as a string with the one computed at the handshake and reads like the openssl output."""
    raw = text.strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        if raw.startswith(prefix):
            raw = raw[len(prefix) :]
    hexed = raw.replace(":", "")
    if not _HEX64_RE.fullmatch(hexed):
        raise ValueError(
            f"bad TLS fingerprint {text!r}: expected a SHA-256 fingerprint, AA:BB:… or 64 hex digits"
        )
    return ":".join(hexed[i : i + 2] for i in range(0, 64, 2)).upper()


class Record(BaseModel):
    """Base for stored records: unknown columns are ignored (SPEC §9 allows extras)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)


class TimeWindow(BaseModel):
    """A daily window in local time; ``start > end`` means it crosses midnight."""

    model_config = ConfigDict(frozen=True)

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        m = _WINDOW_RE.match(text.strip())
        if not m:
            raise ValueError(f"bad time window {text!r}, expected HH:MM-HH:MM")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59:
            raise ValueError(f"bad time window {text!r}")
        end = time(0, 0) if (h2, m2) == (24, 0) else time(h2, m2)
        if time(h1, m1) == end:
            raise ValueError(f"empty time window {text!r}")
        return cls(start=time(h1, m1), end=end)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


class QuietHours(BaseModel):
    """Windows in the callee's local time during which no outbound call is placed (R8)."""

    model_config = ConfigDict(frozen=True)

    windows: tuple[TimeWindow, ...]

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        if text.strip().lower() == "none":
            return cls(windows=())
        return cls(windows=tuple(TimeWindow.parse(part) for part in text.split()))

    def __str__(self) -> str:
        return " ".join(str(w) for w in self.windows) or "none"


DEFAULT_QUIET_HOURS = "21:00-08:00"


class FrequencyCap(BaseModel):
    """Caps of R6; 0 means no limit. Defaults are SPEC §4's."""

    model_config = ConfigDict(frozen=True)

    callee_daily: int = Field(3, ge=0, description="calls per (callee, enterprise) per callee-local day")
    callee_total_daily: int = Field(0, ge=0, description="calls per callee across enterprises per day")
    caller_per_second: int = Field(0, ge=0, description="calls per caller number per second")


class Trunk(Record):
    trunk_id: str = Field(min_length=1)
    enterprise_id: str = Field(min_length=1)
    sources: tuple[str, ...] = Field(min_length=1)
    max_cps: int = Field(0, ge=0)
    status: TrunkStatus = "active"
    max_concurrent: int = Field(0, ge=0)
    # SHA-256 fingerprints of the client certificates this trunk may present over TLS
    # (gateway/tls.py): empty, the trunk is identified by its address alone; set, a TLS
    # connection from its sources must also show one of these certificates.
    tls_fingerprints: tuple[str, ...] = ()

    @field_validator("sources", "tls_fingerprints", mode="before")
    @classmethod
    def _sources(cls, v: Any) -> Any:
        return _split_list(v)

    @field_validator("tls_fingerprints")
    @classmethod
    def _valid_fingerprints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_fingerprint(f) for f in v)

    @field_validator("sources")
    @classmethod
    def _valid_networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for s in v:
            try:
                ipaddress.ip_network(s, strict=False)
            except ValueError as e:
                raise ValueError(f"bad source address {s!r}: expected an IP or CIDR") from e
        return v


class Enterprise(Record):
    enterprise_id: str = Field(min_length=1)
    name: str = ""
    licence_no: str = ""
    licence_expires: date | None = None
    status: EnterpriseStatus = "active"
    purposes: tuple[str, ...] = DEFAULT_PURPOSES
    quiet_hours: QuietHours | None = None
    callee_daily_cap: int | None = Field(None, ge=0)
    # Complaints per rolling 30 days before automatic suspension (R12); None: the
    # `complaint_threshold` setting.
    complaint_threshold: int | None = Field(None, ge=1)
    # Set by automatic restriction (R6/R9); cleared by `cag policy resume`.
    suspended_at: datetime | None = None
    suspended_cause: str | None = None

    @field_validator("purposes", mode="before")
    @classmethod
    def _purposes(cls, v: Any) -> Any:
        return _split_list(v)

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _quiet(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.strip().lower() == "none":
                # An explicit "none" lifts quiet hours for this enterprise (e.g. a
                # 24/7 emergency-callback service); empty means the default.
                return QuietHours(windows=())
            return QuietHours.parse(v) if v.strip() else None
        if isinstance(v, list):
            return QuietHours(windows=tuple(TimeWindow.parse(x) if isinstance(x, str) else x for x in v))
        return v

    @field_validator("licence_expires", mode="before")
    @classmethod
    def _licence(cls, v: Any) -> Any:
        # Accept a full timestamp too: the day is what the licence names.
        if isinstance(v, str) and "T" in v:
            return datetime.fromisoformat(v).date()
        return v

    @field_validator("suspended_at")
    @classmethod
    def _tz(cls, v: datetime | None) -> datetime | None:
        return _aware(v)


class NumberFiling(Record):
    number: str = Field(min_length=1)
    enterprise_id: str = Field(min_length=1)
    carrier: str = ""
    usage: str = ""
    inbound: bool = True
    outbound: bool = False
    status: FilingStatus = "active"


class Consent(Record):
    token: str = Field(min_length=1)
    callee: str = Field(min_length=1)
    enterprise_id: str = Field(min_length=1)
    purpose: str = "callback"
    granted_at: datetime
    expires_at: datetime | None = None
    max_calls: int | None = Field(None, ge=1)
    evidence_ref: str = ""
    revoked_at: datetime | None = None

    @field_validator("granted_at", "expires_at", "revoked_at")
    @classmethod
    def _tz(cls, v: datetime | None) -> datetime | None:
        return _aware(v)

    @model_validator(mode="after")
    def _order(self) -> Consent:
        if self.expires_at is not None and self.expires_at <= self.granted_at:
            raise ValueError("expires_at must be after granted_at")
        return self


class DncEntry(Record):
    number: str = Field(min_length=1)
    scope: DncScope = "all"
    registered_at: datetime | None = None

    @field_validator("registered_at")
    @classmethod
    def _tz(cls, v: datetime | None) -> datetime | None:
        return _aware(v)


class AuditRecord(BaseModel):
    """One decision, durable for ≥ 30 days (R8); ``record_id`` is the X-Admission-Id."""

    model_config = ConfigDict(extra="ignore")

    record_id: str
    time: datetime
    call_id: str
    trunk_id: str | None = None
    enterprise_id: str | None = None
    caller: str | None = None
    callee: str | None = None
    decision: Literal["admit", "reject", "would_reject"]
    reason: str
    sip_code: int
    consent_token: str | None = None
    evidence_ref: str | None = None
    latency_us: int = 0
    node: str = ""
    worker: int = 0
    final_code: int | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None


KIND_MODELS: dict[str, type[Record]] = {
    "trunks": Trunk,
    "enterprises": Enterprise,
    "filings": NumberFiling,
    "consents": Consent,
    "dnc": DncEntry,
}

# The field that identifies a record of each kind (upsert key).
KIND_KEYS: dict[str, str] = {
    "trunks": "trunk_id",
    "enterprises": "enterprise_id",
    "filings": "number",
    "consents": "token",
    "dnc": "number",
}


@dataclass(frozen=True, slots=True)
class CallAttempt:
    """What an initial INVITE says about the call (SPEC §3), as the SIP layer read it.

    Numbers here are raw user parts; the policy engine normalises them, so the
    SIP layer needs no knowledge of numbering plans.
    """

    call_id: str
    branch: str  # top Via branch: with call_id, the transaction identity (SPEC §4)
    source_ip: str
    source_port: int
    callee: str | None  # user part of the Request-URI
    from_user: str | None  # user part of From
    pai_user: str | None  # user part of the first P-Asserted-Identity, if present
    anonymous: bool = False  # From/PAI is an anonymous URI
    privacy_id: bool = False  # Privacy header carries "id" (or "user"/"header")
    consent_token: str | None = None
    purpose: str | None = None
    identity: str | None = None  # RFC 8224 Identity header, for STIR/SHAKEN
    received_at: float = 0.0  # unix time the INVITE arrived

    @property
    def txn_id(self) -> str:
        return f"{self.call_id}|{self.branch}"
