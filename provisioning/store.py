"""The provisioning API's own Redis data: keys, idempotency records, complaints.

Consents, DNC and suspensions are the gateway's data and go through
``policy.store.PolicyStore``; this module holds only what the API adds.
Every key carries a hash tag, so the same code runs on Redis Cluster:

``{cag:api}:keys``
    hash key id -> msgpack ``{h, ent, admin, rate, name, at, rv}``; ``h`` is
    the SHA-256 of the key's secret (the secret itself is never stored: a
    leaked dump gives no usable key). Keys are random 256-bit strings, so a
    plain hash suffices; a slow KDF would only cost every request.
``{a:<key id>}:idem:<sha256 of the Idempotency-Key>``
    msgpack ``{fp, status, body}`` of the first answer, TTL ``IDEM_TTL_S``;
    ``"p"`` while the first request is still being served.
``{cag:cmp}:rec`` / ``{cag:cmp}:all``
    hash complaint id -> msgpack of the complaint; zset id -> filing time
    (ms), for the admin's list of every complaint.
``{e:<enterprise>}:complaints``
    zset complaint id -> ``reported_at`` (ms): the rolling 30-day count (R12)
    is one ZCOUNT; the same tag as the unconsented counter of R6.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
from redis.exceptions import RedisError

from policy.store import StoreError

KEYS = "{cag:api}:keys"
COMPLAINTS = "{cag:cmp}:rec"
COMPLAINTS_ALL = "{cag:cmp}:all"
IDEM_TTL_S = 24 * 3600
IDEM_PENDING_TTL_S = 30
WINDOW_DAYS = 30
KEY_PREFIX = "cag"


def idem_key(key_id: str, idempotency_key: str) -> str:
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return f"{{a:{key_id}}}:idem:{digest}"


def enterprise_complaints_key(enterprise_id: str) -> str:
    return f"{{e:{enterprise_id}}}:complaints"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """``cag_<id>_<secret>`` -> (id, secret); None when the text cannot be a key."""
    prefix, sep, rest = key.partition("_")
    if prefix != KEY_PREFIX or not sep:
        return None
    key_id, sep, secret = rest.partition("_")
    if not sep or not key_id or not secret or len(key) > 200:
        return None
    return key_id, secret


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored (no secret): who it speaks for and how fast it may go."""

    key_id: str
    enterprise_id: str | None  # None for an admin key
    admin: bool
    rate: float  # requests per second (burst: one second's worth)
    name: str
    created_at: datetime
    revoked_at: datetime | None
    secret_hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "enterprise_id": self.enterprise_id,
            "admin": self.admin,
            "rate": self.rate,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, _hash(secret))


def _key_from(key_id: str, raw: bytes) -> ApiKey:
    d = msgpack.unpackb(raw)
    return ApiKey(
        key_id=key_id,
        enterprise_id=d.get("ent"),
        admin=bool(d.get("admin")),
        rate=float(d.get("rate", 100)),
        name=d.get("name", ""),
        created_at=datetime.fromtimestamp(d["at"] / 1000, UTC),
        revoked_at=datetime.fromtimestamp(d["rv"] / 1000, UTC) if d.get("rv") else None,
        secret_hash=d["h"],
    )


def _ms(t: datetime) -> int:
    return round(t.timestamp() * 1000)


class ApiStore:
    """The API's keys, idempotency records and complaints, on the gateway's Redis client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def _call(self, *args: Any) -> Any:
        try:
            return await self.client.execute_command(*args)
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e

    # ------------------------------------------------------------------ keys
    async def create_key(
        self, *, enterprise_id: str | None, admin: bool, rate: float, name: str = "", now: datetime
    ) -> tuple[ApiKey, str]:
        """A new key; returns it and the full key text, which is shown once and never stored."""
        if admin == (enterprise_id is not None):
            raise ValueError("a key is either an admin key or one enterprise's key")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = {"h": _hash(secret), "ent": enterprise_id, "admin": admin, "rate": rate, "name": name,
                  "at": _ms(now), "rv": None}
        await self._call("HSET", KEYS, key_id, msgpack.packb(record))
        return _key_from(key_id, msgpack.packb(record)), f"{KEY_PREFIX}_{key_id}_{secret}"

    async def get_key(self, key_id: str) -> ApiKey | None:
        raw = await self._call("HGET", KEYS, key_id)
        return _key_from(key_id, raw) if raw is not None else None

    async def list_keys(self) -> list[ApiKey]:
        raw = await self._call("HGETALL", KEYS)
        items = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        keys = [_key_from(k.decode() if isinstance(k, bytes) else k, v) for k, v in items]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        """Mark a key revoked (kept for the audit trail's "who"); False when unknown."""
        raw = await self._call("HGET", KEYS, key_id)
        if raw is None:
            return False
        d = msgpack.unpackb(raw)
        if not d.get("rv"):
            d["rv"] = _ms(now)
            await self._call("HSET", KEYS, key_id, msgpack.packb(d))
        return True

    # ----------------------------------------------------------- idempotency
    async def idem_claim(self, key_id: str, idempotency_key: str) -> dict[str, Any] | None:
        """Claim the key for a first request (None), or return the stored first answer.

        ``{"pending": True}`` when the first request is still being served.
        """
        k = idem_key(key_id, idempotency_key)
        if await self._call("SET", k, b"p", "NX", "EX", IDEM_PENDING_TTL_S):
            return None
        raw = await self._call("GET", k)
        if raw is None or raw == b"p":
            return {"pending": True}
        stored: dict[str, Any] = msgpack.unpackb(raw)
        return stored

    async def idem_store(self, key_id: str, idempotency_key: str, fp: str, status: int, body: Any) -> None:
        k = idem_key(key_id, idempotency_key)
        await self._call("SET", k, msgpack.packb({"fp": fp, "status": status, "body": body}), "EX", IDEM_TTL_S)

    async def idem_release(self, key_id: str, idempotency_key: str) -> None:
        """Forget a claim whose request failed, so a retry is served afresh."""
        await self._call("DEL", idem_key(key_id, idempotency_key))

    # ------------------------------------------------------------ complaints
    async def add_complaint(self, complaint: dict[str, Any], *, filed_at: datetime, now: datetime) -> int:
        """Store one complaint; returns its enterprise's count in the 30 days up to ``now``.

        The count is by ``reported_at`` (when the harassment was reported), so
        a complaint filed late still counts in the window it belongs to.
        """
        cid = complaint["complaint_id"]
        ent = complaint.get("enterprise_id")
        packed = msgpack.packb(complaint)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(COMPLAINTS, cid, packed)
            pipe.zadd(COMPLAINTS_ALL, {cid: _ms(filed_at)})
            if ent:
                reported = _ms(datetime.fromisoformat(complaint["reported_at"]))
                pipe.zadd(enterprise_complaints_key(ent), {cid: reported})
            await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e
        return await self.complaint_count(ent, now) if ent else 0

    async def complaint_count(self, enterprise_id: str, now: datetime) -> int:
        since = _ms(now) - WINDOW_DAYS * 86_400_000
        return int(await self._call("ZCOUNT", enterprise_complaints_key(enterprise_id), since, "+inf"))

    async def list_complaints(
        self, *, enterprise_id: str | None, since: datetime | None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Newest first: by ``reported_at`` for one enterprise, by filing time for all."""
        lo: Any = _ms(since) if since else "-inf"
        key = enterprise_complaints_key(enterprise_id) if enterprise_id else COMPLAINTS_ALL
        ids = await self._call("ZRANGE", key, "+inf", lo, "BYSCORE", "REV", "LIMIT", 0, limit)
        if not ids:
            return []
        raws = await self._call("HMGET", COMPLAINTS, *ids)
        return [msgpack.unpackb(r) for r in raws if r is not None]
