"""Operator writes in Redis: file loads, consent and DNC one-offs, export, suspend/resume.

A mixin of ``policy.store.PolicyStore`` (the key layout is told there). The
one-off look-ups of a consent or a DNC entry live here too: they read the
same layers the one-off writes change, by the same token index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

import msgpack
from redis.exceptions import RedisError

from policy.bulk import BATCH_ROWS, GC_GRACE_S, LayerWriter
from policy.layout import (
    GEN_POINTER,
    GEN_SEQ,
    OPS,
    consent_field,
    consent_layer_key,
    dnc_decode,
    dnc_layer_key,
    dnc_value,
    from_ms,
    index_key,
    index_shard,
    pack_consent,
    revoked_key,
    split,
    token_layer_key,
    token_shard,
    unpack_consent,
    used_key,
)
from policy.model import KIND_MODELS, Consent, DncEntry, Record
from policy.store_keys import REF_KINDS, REF_VERSION, StoreError, _opt, _pairs, _s, ref_key
from policy.store_refdata import RefDataMixin, RefWriter

if TYPE_CHECKING:
    from policy.store import PolicyStore


def _ms(t: datetime | None) -> str:
    return "" if t is None else str(round(t.timestamp() * 1000))


def _normalize(number: str) -> str:
    """Keys use the same normalised form as the engine's callee (E.164)."""
    try:
        from policy.numbers import normalize_number
    except ImportError:  # pragma: no cover - numbers.py is written in parallel
        return number
    return normalize_number(number) or number


class WritesMixin(RefDataMixin):
    """Operator writes and one-off look-ups (mixed into ``PolicyStore``)."""

    if TYPE_CHECKING:  # PolicyStore's own (policy/store.py)

        async def bulk_pipeline(
            self, commands: Sequence[tuple[Any, ...]], timeout: float = 30.0
        ) -> list[Any]: ...

        async def fcall(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any: ...

        async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]: ...

    def _store(self) -> PolicyStore:
        """This object as the store the bulk writers take (every ``WritesMixin`` is a ``PolicyStore``)."""
        return cast("PolicyStore", self)

    # ------------------------------------------------------------------ plumbing
    async def _call(self, *args: Any) -> Any:
        """One command outside the hot path; errors become StoreError."""
        try:
            return await self.client.execute_command(*args)
        except (RedisError, OSError) as e:
            raise StoreError(f"redis: {e}") from e

    _call_raw = _call

    async def _checked(self, commands: Sequence[tuple[Any, ...]], *, hot: bool = False) -> list[Any]:
        """A non-transactional pipeline whose every reply must be a success.

        ``hot``: a few commands, on the hot path's pipeline (the hot link on a single
        server: ~12 µs of client CPU a round trip, against ~45 through redis-py's pool).
        """
        if not commands:
            return []
        try:
            results = await (self._pipeline(commands) if hot else self.bulk_pipeline(commands))
        except (RedisError, OSError, TimeoutError) as e:
            raise StoreError(f"redis: {e}") from e
        for r in results:
            if isinstance(r, Exception):
                raise StoreError(f"redis: {r}")
        return results

    async def _read(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        return await self._checked(commands)

    # ------------------------------------------------------------------ writes
    async def put_records(
        self, kind: str, records: Sequence[Record], *, replace: bool = False
    ) -> int:
        """Upsert ``records`` of ``kind`` (``replace``: they become the whole set). Returns the count.

        All-or-nothing on a single server and on Cluster alike. Reference
        kinds: one MULTI/EXEC on the ``{cag:ref}`` slot (a staged hash swapped
        in for big sets, so no single command runs long). Consents and DNC: a
        new generation switched in by one script (policy/bulk.py); a
        duplicate key raises ValueError and switches nothing. Streaming file
        loads use ``LayerWriter`` / ``RefWriter`` directly.
        """
        if kind not in KIND_MODELS:
            raise ValueError(f"unknown kind {kind!r}")
        model = KIND_MODELS[kind]
        wrong = [r for r in records if not isinstance(r, model)]
        if wrong:
            raise TypeError(f"{kind}: expected {model.__name__} records, got {type(wrong[0]).__name__}")
        if kind in REF_KINDS:
            w = RefWriter(self._store(), kind, replace=replace)
            await w.begin()
            await w.add(records)
            await w.commit()
            return len(records)
        lw = LayerWriter(self._store(), kind, replace=replace)
        await lw.begin()
        try:
            for i in range(0, len(records), BATCH_ROWS):
                await lw.add([row_of(r) for r in records[i : i + BATCH_ROWS]])
            await lw.finish()
            if lw.suspects:
                raise ValueError(f"{kind}: duplicate keys in the records: {sorted(lw.suspects)[:5]}")
        except BaseException:
            await lw.abort()
            raise
        await lw.commit(grace_s=GC_GRACE_S)
        return len(records)

    async def layer_writer(self, kind: str, *, replace: bool) -> LayerWriter:
        """A started streaming load of ``dnc`` or ``consents`` (``add`` rows from ``row_of``, ``finish``, ``commit``)."""
        w = LayerWriter(self._store(), kind, replace=replace)
        await w.begin()
        return w

    async def _ensure_layer(self, kind: str) -> tuple[int, ...]:
        """The kind's layers; a first base generation when none exists (single-record writes)."""
        layers = (await self.refresh_layers()).get(kind, ())
        if layers:
            return layers
        # No version bump: an empty kind has nothing to switch from; workers read the
        # pointer with every version poll (refresh interval, 0.5 s) and on the publish.
        gen = int(await self._call("INCR", GEN_SEQ))
        await self._call("HSETNX", GEN_POINTER, kind, str(gen))
        await self.publish_layers()
        return (await self.refresh_layers()).get(kind, ())

    async def _token_owner(self, token: str, layers: tuple[int, ...]) -> str | None:
        if not layers:
            return None
        keys = [token_layer_key(token_shard(token), g) for g in layers]
        (owner,) = await self._checked([("FCALL_RO", "cag_token", len(keys), *keys, token)])
        return _opt(owner)

    async def grant_consent(self, consent: Consent) -> None:
        """Grant (or re-grant) one consent in the top layer: effective on the next INVITE.

        Its use count (operator state) survives; an explicit re-grant clears
        an operator revocation of the same token (a file reload does not).
        A token granted before for another callee is removed there.
        """
        await self.grant_consents([consent])

    async def grant_consents(self, consents: Sequence[Consent]) -> None:
        """``grant_consent`` for several at once, as if one after the other, in two round trips.

        The provisioning API hands over the consents of its concurrent requests
        together: one pipeline reads the layer pointers and looks the tokens up
        in the layers last seen (again, if the pointers moved), one writes,
        instead of three round trips (and kernel sends) per consent.
        """
        if not consents:
            return

        def look_ups(layers: tuple[int, ...]) -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            for c in consents:
                keys = [token_layer_key(token_shard(c.token), g) for g in layers]
                out.append(("FCALL_RO", "cag_token", len(keys), *keys, c.token))
            return out

        seen = (self._gens or {}).get("consents", ())
        pointers, *found = await self._checked([("HGETALL", GEN_POINTER), *(look_ups(seen) if seen else ())], hot=True)
        layers = self._set_layers(_pairs(pointers)).get("consents", ()) or await self._ensure_layer("consents")
        if layers != seen:
            found = await self._checked(look_ups(layers), hot=True)
        top = layers[0]
        owners = {c.token: _opt(o) for c, o in zip(consents, found, strict=True)}
        cmds: list[tuple[Any, ...]] = []
        for consent in consents:
            callee = _normalize(consent.callee)
            token = consent.token
            old = owners[token]
            if old is not None and old != callee:
                ob, _ = split(old)
                cmds += [("HDEL", consent_layer_key(ob, g), consent_field(old, token)) for g in layers]
            owners[token] = callee  # a later grant of the same token in this batch moves it from here
            bucket, _ = split(callee)
            field = consent_field(callee, token)
            cmds += [
                ("HSET", consent_layer_key(bucket, top), field, _pack(consent)),
                ("HSET", token_layer_key(token_shard(token), top), token, callee),
                ("SADD", index_key("consents", top, index_shard(bucket)), bucket),
                ("HDEL", revoked_key(bucket), field),
            ]
        await self._checked(cmds, hot=True)

    async def revoke_consent(self, token: str, at: datetime) -> bool:
        """Record an operator revocation at ``at``; effective on the next INVITE. False: unknown token.

        Kept apart from the loaded consent (``{c:<bucket>}:crv``), so reloading
        the consent file does not re-grant it.
        """
        layers = (await self.refresh_layers()).get("consents", ())
        callee = await self._token_owner(token, layers)
        if callee is None:
            return False
        bucket, _ = split(callee)
        keys = [revoked_key(bucket), *[consent_layer_key(bucket, g) for g in layers]]
        res = await self.fcall("cag_revoke", keys, (consent_field(callee, token), _ms(at)))
        return bool(int(res))

    async def _consent_raw(self, token: str) -> tuple[str, dict[str, Any], str] | None:
        layers = (await self.refresh_layers()).get("consents", ())
        callee = await self._token_owner(token, layers)
        if callee is None:
            return None
        bucket, _ = split(callee)
        field = consent_field(callee, token)
        replies = await self._checked(
            [("HGET", consent_layer_key(bucket, g), field) for g in layers]
            + [("HGET", revoked_key(bucket), field), ("HGET", used_key(bucket), field)]
        )
        *found, rvo, used = replies
        value = next((v for v in found if v is not None), None)
        if not value:  # absent, or a tombstone
            return None
        d = unpack_consent(value)
        if rvo is not None and (d.get("rv") in ("", None) or int(rvo) < int(d["rv"])):
            d["rv"] = int(rvo)
        return callee, d, _s(used) if used is not None else "0"

    async def get_consent(self, token: str) -> Consent | None:
        """The consent as the gateway judges it (an operator revocation shown as ``revoked_at``)."""
        raw = await self._consent_raw(token)
        if raw is None:
            return None
        callee, d, _ = raw
        return _consent_from(token, callee, d)

    async def consent_used(self, token: str) -> int:
        """How many admitted calls a consent has counted (for explain / tests)."""
        raw = await self._consent_raw(token)
        return int(raw[2]) if raw is not None else 0

    async def set_consent_used(self, token: str, used: int) -> bool:
        """Set a consent's use count (operator correction; tests). False: unknown token."""
        layers = (await self.refresh_layers()).get("consents", ())
        callee = await self._token_owner(token, layers)
        if callee is None:
            return False
        await self._checked([("HSET", used_key(split(callee)[0]), consent_field(callee, token), used)])
        return True

    async def consents_for(self, callee: str) -> list[Consent]:
        """Every consent granted for one callee (one bucket read per layer)."""
        n = _normalize(callee)
        bucket, suffix = split(n)
        layers = (await self.refresh_layers()).get("consents", ())
        seen: dict[str, bytes] = {}
        for g in layers:
            (h,) = await self._checked([("HGETALL", consent_layer_key(bucket, g))])
            for k, v in (h or {}).items():
                f = _s(k)
                if f.startswith(suffix + ":") and f not in seen:
                    seen[f] = v
        out = []
        for f, v in sorted(seen.items()):
            if v:
                c = await self.get_consent(f.split(":", 1)[1])
                if c is not None and c.callee == n:
                    out.append(c)
        return out

    async def export_layered(self, kind: str) -> AsyncIterator[Record]:
        """Every live DNC entry or consent, bucket by bucket (bounded reads; ``policy export``).

        Overlay buckets first (their entries shadow the base's), then the base
        buckets the overlay did not have. Consents carry an operator revocation
        as ``revoked_at``, like ``get_consent``.
        """
        from policy.bulk import bucket_batches

        layers = (await self.refresh_layers()).get(kind, ())
        layer_key = dnc_layer_key if kind == "dnc" else consent_layer_key
        done: set[str] = set()  # buckets already written (those of the overlay: small)
        for i, gen in enumerate(layers):
            async for batch in bucket_batches(self._store(), kind, gen):
                todo = [b for b in batch if b not in done]
                cmds: list[tuple[Any, ...]] = []
                for b in todo:
                    cmds += [("HGETALL", layer_key(b, g)) for g in layers]
                    if kind == "consents":
                        cmds.append(("HGETALL", revoked_key(b)))
                replies = await self._checked(cmds)
                per = len(layers) + (1 if kind == "consents" else 0)
                for j, b in enumerate(todo):
                    got = replies[j * per : (j + 1) * per]
                    merged: dict[str, Any] = {}
                    for h in got[: len(layers)]:
                        for f, v in _pairs(h).items():
                            merged.setdefault(f, v)
                    rvo = _pairs(got[-1]) if kind == "consents" else {}
                    for f in sorted(merged):
                        rec = self._exported(kind, b, f, merged[f], rvo)
                        if rec is not None:
                            yield rec
                if i < len(layers) - 1:
                    done.update(todo)

    def _exported(self, kind: str, bucket: str, field: str, value: Any, rvo: dict[str, Any]) -> Record | None:
        if kind == "dnc":
            scope, at = dnc_decode(value)
            return DncEntry(number=bucket + field, scope=scope, registered_at=at)  # type: ignore[arg-type]
        if not value:
            return None  # a tombstone
        suffix, _, token = field.partition(":")
        d = unpack_consent(value)
        r = rvo.get(field)
        if r is not None and (d.get("rv") in ("", None) or int(r) < int(d["rv"])):
            d["rv"] = int(r)
        return _consent_from(token, bucket + suffix, d)

    async def dnc_add(self, entry: DncEntry) -> None:
        """Register one number in the top DNC layer (effective on the next INVITE)."""
        layers = await self._ensure_layer("dnc")
        n = _normalize(entry.number)
        bucket, suffix = split(n)
        await self._checked(
            [
                ("HSET", dnc_layer_key(bucket, layers[0]), suffix, dnc_value(entry.scope, entry.registered_at)),
                ("SADD", index_key("dnc", layers[0], index_shard(bucket)), bucket),
            ]
        )

    async def dnc_remove(self, number: str) -> bool:
        """Remove a number from every DNC layer (True when it was registered)."""
        n = _normalize(number)
        bucket, suffix = split(n)
        layers = (await self.refresh_layers()).get("dnc", ())
        res = await self._checked([("HDEL", dnc_layer_key(bucket, g), suffix) for g in layers])
        return any(int(r) for r in res)

    async def get_dnc(self, number: str) -> DncEntry | None:
        n = _normalize(number)
        bucket, suffix = split(n)
        layers = (await self.refresh_layers()).get("dnc", ())
        res = await self._checked([("HGET", dnc_layer_key(bucket, g), suffix) for g in layers])
        value = next((v for v in res if v is not None), None)
        if value is None:
            return None
        scope, at = dnc_decode(value)
        return DncEntry(number=n, scope=scope, registered_at=at)  # type: ignore[arg-type]

    async def set_status(
        self,
        kind: Literal["enterprise", "trunk"],
        ident: str,
        status: str,
        *,
        cause: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Suspend / resume one trunk or enterprise; False when it does not exist.

        Operator state of its own (``{cag:ref}:ops``), applied over the loaded
        record by ``load_refdata``: reloading the trunks or enterprises file
        does not lift a suspension, manual or automatic. ``active`` over a
        record loaded as active simply drops the operator entry. Checked in
        Lua (``cag_ref_op``) against the record's existence, atomically.
        """
        plural = "enterprises" if kind == "enterprise" else "trunks"
        model = KIND_MODELS[plural]
        key = ref_key(plural)
        (old,) = await self._read([("HGET", key, ident)])
        if old is None:
            return False
        data = msgpack.unpackb(old)
        op: dict[str, Any] = {"status": status}
        if kind == "enterprise" and status != "active":
            op["suspended_at"] = (at or datetime.now(UTC)).isoformat()
            op["suspended_cause"] = cause
        model.model_validate({**data, **op})  # raises ValueError on a bad status
        value = b"" if status == data.get("status", "active") == "active" else msgpack.packb(op)
        version = await self.fcall("cag_ref_op", (key, OPS, REF_VERSION), (ident, f"{kind}:{ident}", value))
        if int(version) < 0:
            return False
        await self._publish(int(version))
        return True



def _pack(c: Consent) -> bytes:
    return pack_consent(
        c.enterprise_id, c.purpose, c.granted_at, c.expires_at, c.max_calls, c.evidence_ref, c.revoked_at
    )


def row_of(r: Record) -> Any:
    """A validated record as the row LayerWriter takes."""
    if isinstance(r, DncEntry):
        return (_normalize(r.number), dnc_value(r.scope, r.registered_at))
    if isinstance(r, Consent):
        return (r.token, _normalize(r.callee), _pack(r))
    raise TypeError(f"not a layered record: {type(r).__name__}")


def _consent_from(token: str, callee: str, d: dict[str, Any]) -> Consent:
    """A stored consent record (short field names, times in ms) as the model."""
    return Consent(
        token=token,
        callee=callee,
        enterprise_id=d.get("ent", ""),
        purpose=d.get("pur") or "callback",
        granted_at=from_ms(d.get("gr")) or datetime.fromtimestamp(0, UTC),
        expires_at=from_ms(d.get("ex")),
        max_calls=int(d["max"]) if d.get("max") not in ("", None) else None,
        evidence_ref=d.get("ev", ""),
        revoked_at=from_ms(d.get("rv")),
    )
