"""POST /v1/consents' fast path (``provisioning.app.consent_fast``) answers exactly as the route.

The fast path skips FastAPI's per-request work for the usual request and
hands anything else to the route; these tests send the same requests to an
app with and without it and compare the answers, then check which requests
the fast path takes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from provisioning import metrics
from provisioning.app import consent_fast, create_app
from tests.integration.test_api import Api, api, consent_body  # noqa: F401 (api: the fixture)

pytestmark = pytest.mark.integration

GENERATED = ("token", "granted_at")  # differ between two grants of the same body


@pytest.fixture
async def route(api: Api) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    app = create_app(api.state, manage_lifespan=False, fast_path=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:  # type: ignore[arg-type]
        yield client


def _norm(r: httpx.Response) -> tuple[int, str, Any, str | None]:
    body = r.json() if r.content else None
    if isinstance(body, dict) and r.status_code == 201:
        body = {k: v for k, v in body.items() if k not in GENERATED}
    return r.status_code, r.headers.get("content-type", ""), body, r.headers.get("www-authenticate")


CASES: list[tuple[str, str | None, Any, dict[str, str]]] = [
    ("created", "a", consent_body(), {}),
    ("created by admin", "admin", consent_body(enterprise_id="ent-a"), {}),
    ("admin must name the enterprise", "admin", consent_body(), {}),
    ("another enterprise", "a", consent_body(enterprise_id="ent-b"), {}),
    ("marketing", "a", consent_body(purpose="marketing"), {}),
    ("expiry before grant", "a", consent_body(granted_at="2031-01-01T00:00:00Z"), {}),
    ("not a number", "a", consent_body(callee="12"), {}),
    ("missing field", "a", {"callee": "13800138000"}, {}),
    ("unknown field", "a", consent_body(colour="red"), {}),
    ("no zone", "a", consent_body(expires_at="2030-01-01T00:00:00"), {}),
    ("not JSON", "a", "{", {}),
    ("a list", "a", [consent_body()], {}),
    ("no key", None, consent_body(), {}),
    ("unknown key", "bogus", consent_body(), {}),
    ("basic auth", "basic", consent_body(), {}),
    ("spaces after the scheme", "spaced", consent_body(), {}),
    ("text body", "a", consent_body(), {"Content-Type": "text/plain"}),
    ("JSON with charset", "a", consent_body(), {"Content-Type": "Application/JSON; charset=utf-8"}),
    ("not quite JSON", "a", consent_body(), {"Content-Type": "application/jsonfoo"}),
    ("a JSON suffix", "a", consent_body(), {"Content-Type": "application/merge-patch+json"}),
    ("long idempotency key", "a", consent_body(), {"Idempotency-Key": "k" * 256}),
]


def _headers(api: Api, who: str | None, extra: dict[str, str]) -> dict[str, str]:  # noqa: F811
    h = {"Content-Type": "application/json"}
    if who == "bogus":
        h["Authorization"] = "Bearer cag_nope_secret"
    elif who == "basic":
        h["Authorization"] = "Basic abc"
    elif who == "spaced":
        h["Authorization"] = f"bearer   {api.keys['a']}"
    elif who is not None:
        h["Authorization"] = f"Bearer {api.keys[who]}"
    h.update(extra)
    return h


@pytest.mark.parametrize(("name", "who", "body", "extra"), CASES, ids=[c[0] for c in CASES])
async def test_same_answer_with_and_without_the_fast_path(
    api: Api, route: httpx.AsyncClient, name: str, who: str | None, body: Any, extra: dict[str, str]  # noqa: F811
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    headers = _headers(api, who, extra)
    fast = await api.client.post("/v1/consents", content=content, headers=headers)
    slow = await route.post("/v1/consents", content=content, headers=headers)
    assert _norm(fast) == _norm(slow), (name, fast.text, slow.text)


async def test_idempotent_replay_across_the_two_paths(api: Api, route: httpx.AsyncClient) -> None:  # noqa: F811
    headers = _headers(api, "a", {"Idempotency-Key": "crm-1"})
    first = await api.client.post("/v1/consents", json=consent_body(), headers=headers)
    again = await route.post("/v1/consents", json=consent_body(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = await api.client.post("/v1/consents", json=consent_body(max_calls=2), headers=headers)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"


async def test_fast_path_takes_only_the_usual_request(api: Api) -> None:  # noqa: F811
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    def scope(headers: dict[str, str]) -> dict[str, Any]:
        return {"type": "http", "method": "POST", "path": "/v1/consents",
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}

    good = json.dumps(consent_body()).encode()
    assert await consent_fast(api.state, scope(_headers(api, "a", {})), good, send)
    assert sent[0]["status"] == 201
    sent.clear()
    # An answer the route makes (422 on the body, 401 for Basic, a text body): left to it, nothing sent.
    assert not await consent_fast(api.state, scope(_headers(api, "a", {})), b'{"callee": 1}', send)
    assert not await consent_fast(api.state, scope(_headers(api, "basic", {})), good, send)
    assert not await consent_fast(api.state, scope(_headers(api, "a", {"Content-Type": "text/plain"})), good, send)
    assert sent == []
    # A refusal on a valid body (403 another enterprise) is answered here, as problem JSON.
    other = json.dumps(consent_body(enterprise_id="ent-b")).encode()
    assert await consent_fast(api.state, scope(_headers(api, "a", {})), other, send)
    assert sent[0]["status"] == 403


async def test_fast_path_requests_are_counted_under_their_route(api: Api) -> None:  # noqa: F811
    before = metrics.REQUESTS.labels("/v1/consents", "POST", "201")._value.get()
    r = await api.req("POST", "/v1/consents", json=consent_body())
    assert r.status_code == 201
    assert metrics.REQUESTS.labels("/v1/consents", "POST", "201")._value.get() == before + 1


async def test_a_bug_in_the_fast_path_answers_500_problem_json(
    api: Api, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    assert api.state.consents is not None

    async def broken(item: Any) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(api.state.consents, "submit", broken)
    before = metrics.REQUESTS.labels("/v1/consents", "POST", "500")._value.get()
    r = await api.req("POST", "/v1/consents", json=consent_body())
    assert r.status_code == 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] == "internal error (KeyError)"
    assert metrics.REQUESTS.labels("/v1/consents", "POST", "500")._value.get() == before + 1
