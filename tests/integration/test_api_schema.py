"""schemathesis against the API's own OpenAPI: no generated input gets a 500 (issue 16).

A real ``cag api`` process on a real redis-server; each operation gets
valid-shaped (positive) and invalid (negative) inputs, with an admin key and
with an enterprise key. Bounded: ``EXAMPLES`` per operation and mode keeps
the whole run near a minute on the shared CI box.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.conftest import free_port
from tests.integration.harness import CAG, standard_policy

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("CAG_SCHEMA_EXAMPLES", "50"))


@pytest.fixture
def api_proc(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    standard_policy(redis_url, callees=3)

    def key(*who: str) -> str:
        r = subprocess.run([CAG, "api", "key", "create", *who, "--rate", "100000", "--redis-url", redis_url],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    keys = {"admin": key("--admin"), "E1": key("--enterprise", "E1")}
    port = free_port(socket.SOCK_STREAM)
    log = open(tmp_path / "api.log", "wb")  # closed below
    proc = subprocess.Popen(
        [CAG, "api", "--listen", f"127.0.0.1:{port}", "--redis-url", redis_url, "--state-dir", str(tmp_path),
         "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.1)
        yield base, keys
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert b"Traceback" not in (tmp_path / "api.log").read_bytes(), (tmp_path / "api.log").read_text()


def test_no_generated_input_gets_a_server_error(api_proc: tuple[str, dict[str, str]]) -> None:
    base, keys = api_proc
    schema = schemathesis.openapi.from_url(base + "/v1/openapi.json")
    failures: list[str] = []
    statuses: dict[int, int] = {}
    ran = 0

    def check(op: Any, mode: GenerationMode, who: str) -> None:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal ran
            ran += 1
            r = case.call(base_url=base, headers={"Authorization": f"Bearer {keys[who]}"}, timeout=10)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {who}: {r.status_code} {r.text[:300]}")
            elif r.status_code >= 400:
                ctype = r.headers.get("content-type", "")
                ctype = ctype[0] if isinstance(ctype, list) else ctype
                if not ctype.startswith("application/problem+json"):
                    failures.append(f"{case.method} {case.formatted_path}: {r.status_code} not problem JSON")

        run()

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for who in ("admin", "E1"):
                check(op, mode, who)
    assert ran >= 6 * 2 * 2
    print("statuses", sorted(statuses.items()))
    assert any(200 <= s < 300 for s in statuses) and 422 in statuses, statuses
    assert not failures, "\n".join(failures[:20])
