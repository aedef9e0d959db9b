"""The provisioning API (SPEC §10): consents from CRMs, DNC, complaints, explain.

A FastAPI app over the same Redis as the gateway, in a process of its own.
Whatever it writes is what the workers read on the next INVITE: consents
and DNC through ``PolicyStore`` (the very methods ``cag policy`` uses),
suspensions through ``set_status`` (workers see them within 1 s).

Request path, cheapest first: body size (413, before anything is parsed),
key (401; the key record is cached 1 s, so a revoked key stops within a
second), per-key token bucket (429, in this process: N API processes give
a key N times its rate), then validation (422) and the handler. Every error
is RFC 9457 problem JSON (``provisioning.problems``).

``POST /v1/consents``, the one route CRMs call at rate, has a fast path
(``consent_fast``) past FastAPI's per-request machinery for the usual
request; it calls the same ``authenticate`` and ``consent_create`` as the
route and leaves every other request to it (docs/api.md, "Performance").

The bodies are in ``provisioning.schemas``, the body-limit and metrics
wrapper in ``provisioning.guard``; the routes stay in one ``create_app``
because they all close over the same ``ApiState``, key dependency and
idempotency helper, and read as the API's table of contents.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.audit.record import Entry
from gateway.config import Settings
from policy.hotlink import HotLink, LinkTarget
from policy.loader import RowError, validate_row
from policy.model import CallAttempt, Consent, DncEntry, Enterprise
from policy.numbers import normalize_number
from policy.store import PolicyStore, StoreError
from provisioning import metrics, problems
from provisioning.batch import Coalescer
from provisioning.changes import ChangeLog
from provisioning.complaints import channel_label, file_complaint
from provisioning.guard import MAX_BODY as MAX_BODY  # re-exported: the limit is part of the API
from provisioning.guard import FastHandler, _Guard
from provisioning.problems import Problem
from provisioning.schemas import (
    TOKEN_RE,
    ComplaintIn,
    ComplaintOut,
    ConsentIn,
    ConsentOut,
    DncIn,
    DncOut,
    ExplainIn,
    Time,
)
from provisioning.store import ApiKey, ApiStore, split_key

log = logging.getLogger("cag.api")

KEY_CACHE_S = 1.0
FUTURE_SLACK = timedelta(minutes=5)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class ApiState:
    """What the handlers share: stores, the engine (explain, reference data), caches."""

    settings: Settings
    redis_url: str
    audit_roots: list[Path]
    policy: PolicyStore | None = None
    api: ApiStore | None = None
    changes: ChangeLog | None = None
    engine: Any = None
    sync_client: Any = None
    consents: Coalescer[tuple[Consent, Entry]] | None = None
    audit_failed_seen: int = 0
    audit_link: HotLink | None = None
    keys: dict[str, tuple[ApiKey | None, float, str | None]] = field(default_factory=dict)
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    async def start(self) -> None:
        from policy.engine import AdmissionEngine

        self.policy = await PolicyStore.connect(self.redis_url)
        await self.policy.ensure_functions()
        self.api = ApiStore(self.policy.client)
        # The audit records' XADDs on a hot link of their own (policy.hotlink: ~12 µs of client
        # CPU a round trip, ~45 through redis-py's pool); redis-py where it does not apply.
        pipeline: Callable[[Sequence[tuple[Any, ...]]], Awaitable[list[Any]]] = self.policy.bulk_pipeline
        target = None if self.policy.cluster else LinkTarget.from_url(self.redis_url)
        if target is not None:
            self.audit_link = HotLink(target, reply_timeout=5.0)
            pipeline = self.audit_link.pipeline
        self.changes = changes = ChangeLog(self.policy.client, pipeline=pipeline)
        policy = self.policy

        async def grant_and_record(batch: list[tuple[Consent, Entry]]) -> None:
            # One-off grants into the top layer (what `cag policy consent grant` does), the
            # whole batch in two round trips (a file-style put_records would write a new
            # generation), then their audit records in a third: recorded once made.
            await policy.grant_consents([c for c, _ in batch])
            await changes.write([e for _, e in batch])
            if changes.failed > self.audit_failed_seen:
                metrics.AUDIT_FAILED.inc(changes.failed - self.audit_failed_seen)
                self.audit_failed_seen = changes.failed

        self.consents = Coalescer(grant_and_record)
        # Only explain() is used here (nothing counted); like `cag explain`, never a shadow decision.
        cfg = dataclasses.replace(self.settings.engine_config(), shadow=False)
        self.engine = AdmissionEngine(self.policy, cfg)
        await self.engine.start()

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.audit_link is not None:
            self.audit_link.close()
        if self.policy is not None:
            await self.policy.close()
        if self.sync_client is not None:
            self.sync_client.close()

    def trace_client(self) -> Any:
        """A synchronous client for the trace's stream read (run in a thread)."""
        if self.sync_client is None:
            import redis

            if self.policy is not None and self.policy.cluster:
                from redis.cluster import RedisCluster

                self.sync_client = RedisCluster.from_url(self.redis_url)
            else:
                self.sync_client = redis.Redis.from_url(self.redis_url)
        return self.sync_client


def _now() -> datetime:
    return datetime.now(UTC)


def _state(request: Request) -> ApiState:
    st: ApiState = request.app.state.api
    return st


def _stores(st: ApiState) -> tuple[PolicyStore, ApiStore, ChangeLog]:
    if st.policy is None or st.api is None or st.changes is None:
        raise Problem(503, "starting", retry_after=1)
    return st.policy, st.api, st.changes


_bearer = HTTPBearer(auto_error=False, description="an API key from `cag api key create`")


async def principal(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    """The caller's key (401 without a valid one), then its rate limit (429)."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise Problem(401, "an API key is required: Authorization: Bearer KEY", headers=_UNAUTHORIZED)
    return await authenticate(_state(request), creds.credentials)


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def authenticate(st: ApiState, credentials: str) -> ApiKey:
    """The key a bearer credential names (401 unless valid), after its rate limit (429)."""
    parts = split_key(credentials)
    if parts is None:
        raise Problem(401, "unknown API key", headers=_UNAUTHORIZED)
    key_id, secret = parts
    now = time.monotonic()
    cached = st.keys.get(key_id)
    if cached is None or cached[1] < now:
        _, api, _ = _stores(st)
        key = await api.get_key(key_id)
        if len(st.keys) > 10_000:
            st.keys.clear()
        # The secret that matched is kept with the record (for the cache's second), so the
        # key's next requests compare it instead of hashing again.
        ok = key is not None and key.revoked_at is None and key.matches(secret)
        st.keys[key_id] = cached = (key, now + KEY_CACHE_S, secret if ok else None)
    key, _, known = cached
    if key is None or key.revoked_at is not None or known is None or not hmac.compare_digest(known, secret):
        if key is None or key.revoked_at is not None or not key.matches(secret):
            raise Problem(401, "unknown API key", headers=_UNAUTHORIZED)
    _take(st, key, time.monotonic())
    return key


def _take(st: ApiState, key: ApiKey, now: float) -> None:
    """Token bucket per key: ``rate`` per second, bursts of one second's worth."""
    b = st.buckets.get(key.key_id)
    if b is None:
        b = st.buckets[key.key_id] = _Bucket(key.rate, now)
    # Requests that awaited Redis for their key reach here out of order: time never runs back.
    if now > b.at:
        b.tokens = min(key.rate, b.tokens + (now - b.at) * key.rate)
        b.at = now
    if b.tokens < 1.0:
        raise Problem(429, f"rate limit of key {key.key_id}: {key.rate:g} requests/s",
                      retry_after=(1.0 - b.tokens) / key.rate)
    b.tokens -= 1.0


Key = Annotated[ApiKey, Depends(principal)]


def _admin(key: ApiKey) -> None:
    if not key.admin:
        raise Problem(403, "this needs an admin key")


def _actor(key: ApiKey) -> str:
    return key.key_id


def _stored(t: datetime | None) -> datetime | None:
    """A time as the store keeps it (UTC, milliseconds), so POST and GET answer alike."""
    if t is None:
        return None
    return datetime.fromtimestamp(round(t.timestamp() * 1000) / 1000, UTC)


def _consent_out(c: Consent, used: int) -> dict[str, Any]:
    return ConsentOut(
        token=c.token, callee=c.callee, enterprise_id=c.enterprise_id, purpose=c.purpose,
        granted_at=_stored(c.granted_at) or c.granted_at, expires_at=_stored(c.expires_at),
        max_calls=c.max_calls, evidence_ref=c.evidence_ref, revoked_at=_stored(c.revoked_at), calls_used=used,
    ).model_dump(mode="json")


def _fingerprint(model: BaseModel, key: ApiKey) -> str:
    return hashlib.sha256(f"{key.key_id}\n{model.model_dump_json()}".encode()).hexdigest()


async def _idempotent(
    api: ApiStore, key: ApiKey, idem: str | None, model: BaseModel,
    work: Callable[[], Awaitable[tuple[int, Any]]],
) -> JSONResponse:
    """Run ``work`` once per (key, Idempotency-Key); a retry gets the first answer back."""
    if idem is None:
        status, out = await work()
        return JSONResponse(out, status_code=status)
    fp = _fingerprint(model, key)
    stored = await api.idem_claim(key.key_id, idem)
    if stored is not None:
        if stored.get("pending"):
            raise Problem(409, "a request with this Idempotency-Key is still being served", retry_after=1)
        if stored.get("fp") != fp:
            raise Problem(422, "Idempotency-Key reused with a different request",
                          errors=[{"field": "Idempotency-Key", "message": "already used for another body"}])
        return JSONResponse(stored["body"], status_code=int(stored["status"]),
                            headers={"Idempotent-Replayed": "true"})
    try:
        status, out = await work()
    except BaseException:
        await api.idem_release(key.key_id, idem)
        raise
    await api.idem_store(key.key_id, idem, fp, status, out)
    return JSONResponse(out, status_code=status)


IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255,
                                       description="a retry with the same key returns the first result")]
TokenPath = Annotated[str, PathParam(pattern=TOKEN_RE)]


def _normalized(number: str, field_name: str, region: str) -> str:
    n = normalize_number(number, region)
    if n is None:
        raise Problem(422, "invalid field", errors=[{"field": field_name, "message": f"not a phone number {number!r}"}])
    return n


def create_app(state: ApiState, *, manage_lifespan: bool = True, fast_path: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifespan:
            await state.start()
            # Everything loaded so far (FastAPI, pydantic, the engine's reference data) lives as
            # long as the process: out of the collector's reach, a full collection walks only
            # what requests allocate, instead of ~76,000 objects (76 ms measured on a busy box)
            # with every request in flight waiting.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if manage_lifespan:
                await state.stop()

    app = FastAPI(
        title="cag provisioning API",
        version="1",
        description="Consents, do-not-call entries, complaints and explain for the call admission gateway "
        "(SPEC §10). Errors are RFC 9457 problem JSON.",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
        responses={
            401: {"description": "no key or an unknown key (problem JSON)"},
            413: {"description": "body over 64 KiB (problem JSON)"},
            422: {"description": "invalid request, one entry per bad field (problem JSON)"},
            429: {"description": "rate limit of the key; see Retry-After (problem JSON)"},
        },
    )
    app.state.api = state

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problems.response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problems.response(Problem(422, "invalid request", errors=problems.validation_errors(exc.errors())),
                                 request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problems.response(Problem(exc.status_code, detail, headers=dict(exc.headers or {})), request.url.path)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error on %s %s: %s", request.method, request.url.path, exc)
        return problems.response(Problem(503, "the policy store is unavailable", retry_after=1), request.url.path)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers with this, then re-raises: the guard below logs the traceback.
        return problems.response(Problem(500, f"internal error ({type(exc).__name__})"), request.url.path)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        st = _state(request)
        ok = False
        if st.policy is not None:
            try:
                ok = bool(await asyncio.wait_for(st.policy.client.ping(), 1.0))
            except Exception:
                ok = False
        return JSONResponse({"status": "ok" if ok else "unavailable", "redis": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prom() -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    # ------------------------------------------------------------ consents
    @app.post("/v1/consents", status_code=201, response_model=ConsentOut, tags=["consents"],
              responses={403: {"description": "another enterprise"}, 409: {"description": "token not available"}})
    async def create_consent(request: Request, body: ConsentIn, key: Key,
                             idempotency_key: IdemKey = None) -> JSONResponse:
        """Register a consent (a customer asked to be called back); effective on the next INVITE."""
        return await consent_create(_state(request), key, body, idempotency_key)

    async def _owned(st: ApiState, key: ApiKey, token: str) -> Consent:
        policy, _, _ = _stores(st)
        consent = await policy.get_consent(token)
        # Another enterprise's token answers exactly as an unknown one: its existence is not revealed.
        if consent is None or not (key.admin or consent.enterprise_id == key.enterprise_id):
            raise Problem(404, "no such consent")
        return consent

    @app.get("/v1/consents/{token}", response_model=ConsentOut, tags=["consents"],
             responses={404: {"description": "unknown, or another enterprise's"}})
    async def get_consent(request: Request, token: TokenPath, key: Key) -> JSONResponse:
        """The consent, with ``revoked_at`` and the calls it has admitted."""
        st = _state(request)
        consent = await _owned(st, key, token)
        policy, _, _ = _stores(st)
        return JSONResponse(_consent_out(consent, await policy.consent_used(token)))

    @app.delete("/v1/consents/{token}", status_code=204, tags=["consents"],
                responses={404: {"description": "unknown, or another enterprise's"}})
    async def revoke_consent(request: Request, token: TokenPath, key: Key) -> Response:
        """Revoke (the customer withdrew consent); the next INVITE with it gets 608 consent_revoked."""
        st = _state(request)
        consent = await _owned(st, key, token)
        policy, _, changes = _stores(st)
        if consent.revoked_at is None:  # a repeated DELETE keeps the first revocation time
            await policy.revoke_consent(token, _now())
            await changes.record(_actor(key), "consent_revoke", enterprise_id=consent.enterprise_id,
                                 callee=consent.callee, consent_token=token, evidence_ref=consent.evidence_ref)
        return Response(status_code=204)

    # ------------------------------------------------------------ DNC
    @app.post("/v1/dnc", status_code=201, response_model=DncOut, tags=["dnc"],
              responses={403: {"description": "needs an admin key"}})
    async def add_dnc(request: Request, body: DncIn, key: Key) -> JSONResponse:
        """Register a number as do-not-call (R11); effective on the next INVITE."""
        _admin(key)
        st = _state(request)
        policy, _, changes = _stores(st)
        row = {"number": body.number, "scope": body.scope, "registered_at": body.registered_at or _now()}
        try:
            entry = validate_row("dnc", row, region=st.settings.region)
        except RowError as e:
            raise Problem(422, "invalid request", errors=problems.row_errors(e.reasons)) from None
        assert isinstance(entry, DncEntry)
        await policy.dnc_add(entry)
        await changes.record(_actor(key), "dnc_add", callee=entry.number)
        out = DncOut(number=entry.number, scope=entry.scope, registered_at=entry.registered_at)
        return JSONResponse(out.model_dump(mode="json"), status_code=201)

    @app.delete("/v1/dnc/{number}", status_code=204, tags=["dnc"],
                responses={403: {"description": "needs an admin key"}, 404: {"description": "not on the list"}})
    async def remove_dnc(request: Request, number: Annotated[str, PathParam(min_length=1, max_length=40)],
                         key: Key) -> Response:
        """Remove a do-not-call registration."""
        _admin(key)
        st = _state(request)
        policy, _, changes = _stores(st)
        n = _normalized(number, "number", st.settings.region)
        if not await policy.dnc_remove(n):
            raise Problem(404, f"{n} is not on the do-not-call list")
        await changes.record(_actor(key), "dnc_remove", callee=n)
        return Response(status_code=204)

    # ------------------------------------------------------------ complaints
    @app.post("/v1/complaints", status_code=201, response_model=ComplaintOut, tags=["complaints"],
              responses={403: {"description": "needs an admin key"}})
    async def add_complaint(request: Request, body: ComplaintIn, key: Key,
                            idempotency_key: IdemKey = None) -> JSONResponse:
        """File a harassment report (12321 feed, complaint desk): trace, withdraw consent, count, suspend."""
        _admin(key)
        st = _state(request)
        policy, api, changes = _stores(st)
        region = st.settings.region
        errors = [{"field": f, "message": f"not a phone number {v!r}"}
                  for f, v in (("callee", body.callee), ("caller", body.caller)) if normalize_number(v, region) is None]
        if body.reported_at > _now() + FUTURE_SLACK:
            errors.append({"field": "reported_at", "message": "in the future"})
        if errors:
            raise Problem(422, "invalid request", errors=errors)

        async def work() -> tuple[int, Any]:
            out = await complaint_service(st, policy, api, changes, body, actor=_actor(key))
            return 201, out

        return await _idempotent(api, key, idempotency_key, body, work)

    @app.get("/v1/complaints", response_model=list[ComplaintOut], tags=["complaints"],
             responses={403: {"description": "another enterprise's complaints"}})
    async def list_complaints(
        request: Request, key: Key,
        enterprise_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        since: Annotated[Time | None, Query(description="ISO 8601 with zone")] = None,
    ) -> JSONResponse:
        """Complaints, newest first: an enterprise key sees its own; the admin any or all."""
        st = _state(request)
        _, api, _ = _stores(st)
        if not key.admin:
            if enterprise_id is not None and enterprise_id != key.enterprise_id:
                raise Problem(403, "this key sees only its own enterprise's complaints")
            enterprise_id = key.enterprise_id
        return JSONResponse(await api.list_complaints(enterprise_id=enterprise_id, since=since))

    # ------------------------------------------------------------ explain
    @app.post("/v1/explain", tags=["explain"], responses={403: {"description": "another enterprise's trunk"}})
    async def explain(request: Request, body: ExplainIn, key: Key) -> JSONResponse:
        """Why would this call be admitted or rejected? Same inputs and JSON as ``cag explain``."""
        from policy.decision import ExplainReport

        st = _state(request)
        _stores(st)
        at = body.at or _now()
        call = _call(body, at)
        if not key.admin:
            trunk = st.engine.ref.trunk_for(call.source_ip)
            if trunk is None or trunk.enterprise_id != key.enterprise_id:
                raise Problem(403, "this key explains only calls from its own enterprise's trunks")
        decision = await st.engine.explain(call, at)
        return JSONResponse(ExplainReport(decision, extra={"at": at.isoformat()}).to_json())

    fast: dict[tuple[str, str], FastHandler] = {}
    if fast_path:
        fast[("POST", "/v1/consents")] = functools.partial(consent_fast, state)
    return _Guard(app, fast)  # type: ignore[return-value]


async def consent_create(st: ApiState, key: ApiKey, body: ConsentIn, idempotency_key: str | None) -> JSONResponse:
    """POST /v1/consents once the key and the body are known good (the route and the fast path)."""
    policy, api, changes = _stores(st)
    if key.admin:
        if body.enterprise_id is None:
            raise Problem(422, "invalid request",
                          errors=[{"field": "enterprise_id", "message": "required with an admin key"}])
        ent_id = body.enterprise_id
    else:
        if body.enterprise_id is not None and body.enterprise_id != key.enterprise_id:
            raise Problem(403, "this key acts only for its own enterprise")
        ent_id = str(key.enterprise_id)
    ent = st.engine.ref.enterprises.get(ent_id) if st.engine is not None else None
    if ent is None:  # loaded in the last second? The engine's copy follows within 1 s; Redis now.
        got = await policy.get_ref("enterprises", ent_id)
        ent = got if isinstance(got, Enterprise) else None
    if ent is None:
        if not key.admin:
            raise Problem(403, f"enterprise {ent_id} is not provisioned")
        raise Problem(422, "invalid request", errors=[{"field": "enterprise_id", "message": "unknown enterprise"}])
    purpose = body.purpose.strip().lower()
    allowed = [p.strip().lower() for p in ent.purposes]
    errors: list[dict[str, str]] = []
    if purpose == "marketing" or purpose not in allowed:
        why = "marketing calls need no consent: they are not allowed (R1)" if purpose == "marketing" else \
            f"not one of the enterprise's purposes ({' '.join(allowed)})"
        errors.append({"field": "purpose", "message": why})
    # The same rules as a consents file row (number normalised, expiry after grant); the
    # token is set once the request is known to be valid, so every bad field is named at once.
    row = {
        "token": "-", "callee": body.callee, "enterprise_id": ent_id, "purpose": purpose,
        "granted_at": body.granted_at or _now(), "expires_at": body.expires_at,
        "max_calls": body.max_calls, "evidence_ref": body.evidence_ref,
    }
    try:
        valid = validate_row("consents", row, region=st.settings.region)
    except RowError as e:
        errors += problems.row_errors(e.reasons)
    if errors:
        raise Problem(422, "invalid request", errors=errors)
    assert isinstance(valid, Consent)

    async def work() -> tuple[int, Any]:
        token = body.token
        existing = None
        if token is None:
            # With an Idempotency-Key the token is derived from it: even a retry that
            # outlived its pending claim re-grants the same consent, never a second one.
            seed = f"{key.key_id}\n{idempotency_key}" if idempotency_key else uuid.uuid4().hex
            token = "c-" + hashlib.sha256(seed.encode()).hexdigest()[:24]
        if body.token is not None or idempotency_key:
            existing = await policy.get_consent(token)
            if existing is not None and existing.enterprise_id != ent_id:
                raise Problem(409, "this token is not available; omit token to have one generated")
        consent = valid.model_copy(update={"token": token})
        entry = changes.entry(_actor(key), "consent_grant", enterprise_id=ent_id, callee=consent.callee,
                              consent_token=token, evidence_ref=consent.evidence_ref)
        assert st.consents is not None
        await st.consents.submit((consent, entry))  # granted and recorded with the others waiting
        # A re-grant keeps the calls already counted; a new token has counted none.
        used = await policy.consent_used(token) if existing is not None else 0
        return 201, _consent_out(consent, used)

    return await _idempotent(api, key, idempotency_key, body, work)


async def consent_fast(st: ApiState, scope: dict[str, Any], body: bytes, send: Any) -> bool:
    """``POST /v1/consents`` for the usual request, without the framework's per-request work.

    FastAPI 0.16x re-inspects the route's parameters and dependencies on every request:
    about half the CPU of a consent (0.2 ms) went there. A request with a clean
    ``Authorization: Bearer``, a JSON content type and a body that validates as
    ``ConsentIn`` (json.loads + model_validate, as FastAPI does) is answered here by the
    same ``authenticate`` and ``consent_create`` as the route. Anything else returns
    False untouched, and the route answers it, so every error keeps the framework's form.
    """
    auth = ctype = idem = None
    for k, v in scope["headers"]:
        if k == b"authorization":
            auth = v if auth is None else auth
        elif k == b"content-type":
            ctype = v if ctype is None else ctype
        elif k == b"idempotency-key":
            idem = v if idem is None else idem
    if auth is None or ctype is None or ctype.partition(b";")[0].strip().lower() != b"application/json":
        return False
    scheme, credentials = get_authorization_scheme_param(auth.decode("latin-1"))  # as HTTPBearer reads it
    if scheme.lower() != "bearer" or not credentials:
        return False
    idempotency_key = idem.decode("latin-1") if idem is not None else None
    if idempotency_key is not None and len(idempotency_key) > 255:
        return False
    try:
        model = ConsentIn.model_validate(json.loads(body))
    except (ValueError, ValidationError):  # bad JSON, not UTF-8, invalid fields: the route says which
        return False
    path = scope.get("path")
    try:
        key = await authenticate(st, credentials)
        response = await consent_create(st, key, model, idempotency_key)
    except Problem as exc:
        response = problems.response(exc, path)
    except StoreError as exc:
        log.error("store error on POST %s: %s", path, exc)
        response = problems.response(Problem(503, "the policy store is unavailable", retry_after=1), path)
    await response(scope, _no_receive, send)
    return True


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _call(body: ExplainIn, at: datetime) -> CallAttempt:
    """The explain body as the call attempt the SIP layer would have read (as ``cag explain``)."""
    import ipaddress

    from gateway.config import split_host_port

    source, port = body.source.strip(), 5060
    try:
        ipaddress.ip_address(source)
    except ValueError:
        try:
            source, port = split_host_port(source, source)
            ipaddress.ip_address(source)
        except ValueError:
            raise Problem(422, "invalid request",
                          errors=[{"field": "source", "message": "not an IP address"}]) from None
    anonymous = body.caller.strip().lower() in ("anonymous", "anonymous@anonymous.invalid")
    return CallAttempt(
        call_id=f"explain-{uuid.uuid4().hex}", branch=f"z9hG4bK-explain-{uuid.uuid4().hex[:16]}",
        source_ip=source, source_port=port, callee=body.callee,
        from_user=None if anonymous else body.caller, pai_user=body.pai, anonymous=anonymous,
        privacy_id=body.privacy, consent_token=body.token, purpose=body.purpose, identity=body.identity,
        received_at=at.timestamp(),
    )


async def complaint_service(
    st: ApiState, policy: PolicyStore, api: ApiStore, changes: ChangeLog, body: ComplaintIn, *, actor: str
) -> dict[str, Any]:
    from provisioning.trace import calls_before

    roots, client = st.audit_roots, st.trace_client()

    async def trace(callers: frozenset[str], callees: frozenset[str], reported_at: datetime) -> list[Any]:
        return await asyncio.to_thread(calls_before, roots, client, callers=callers, callees=callees,
                                       reported_at=reported_at)

    metrics.COMPLAINTS.labels(channel_label(body.channel)).inc()
    before = changes.failed
    out = await file_complaint(
        policy, api, changes, trace, callee=body.callee, caller=body.caller, reported_at=body.reported_at,
        channel=body.channel, ref=body.ref, actor=actor, region=st.settings.region,
        default_threshold=st.settings.complaint_threshold,
        on_suspended=lambda _ent: metrics.SUSPENSIONS.inc(),
    )
    if changes.failed > before:
        metrics.AUDIT_FAILED.inc(changes.failed - before)
    return out
