"""Every reason-code family end to end: real SIPp callers, the gateway (2 workers), real Redis.

One gateway and one SIPp callee serve the whole module. The policy world is
loaded once: each enterprise situation (suspended, blacklisted, quiet hours
now, a daily cap of one) has its own trunk on its own loopback address, and a
SIPp caller picks the trunk by binding to that address (``-i 127.0.0.N``), so
no scenario has to wait for a reference-data reload. The scenarios run
concurrently; each SIPp caller writes its messages (``-trace_msg``) and the
test reads the final response it received: status, ``Reason`` header
(SPEC §5: ``Reason: SIP;cause=<code>;text="<reason>"``) and ``Retry-After``.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.embedded_redis import EmbeddedRedis
from tests.conftest import free_port
from tests.integration.harness import SIPP_DIR, GatewayProc, SippUas, load_policy, write_inf

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
SIPP_TIMEOUT_S = 20

# One trunk per enterprise situation, told apart by the caller's loopback address.
SRC_OK = "127.0.0.1"  # E-OK: active, quiet hours "none", no daily cap
SRC_SUSPENDED = "127.0.0.2"  # E-SUSP: suspended (R9)
SRC_BLACKLISTED = "127.0.0.3"  # E-BAD: blacklisted (R10)
SRC_QUIET = "127.0.0.4"  # E-QUIET: a quiet-hours window around the current Shanghai time
SRC_CAP = "127.0.0.5"  # E-CAP: one call per callee a day

CALLER = "95500"  # filed to E-OK, outbound
PAI_OTHER = "4001234567"  # also filed to E-OK: a PAI that differs from From


def _callee(n: int) -> str:
    return f"+86138000000{n:02d}"


@dataclass(frozen=True)
class Scenario:
    name: str
    code: int  # expected final status
    reason: str | None  # expected Reason text; None for the admitted call
    caller: str = CALLER
    callee: str = _callee(1)
    token: str | None = "tok-ok"
    source: str = SRC_OK
    headers: tuple[str, ...] = ()  # extra INVITE header lines
    anonymous_from: bool = False
    retry_after: bool = False  # Retry-After expected
    before: tuple[str, ...] = ()  # tokens of admitted calls placed first (same caller/callee)


SCENARIOS = [
    Scenario("admitted", 200, None),
    Scenario("consent_unknown", 608, "consent_unknown", callee=_callee(2), token="no-such-token"),
    Scenario("consent_missing", 608, "consent_missing", callee=_callee(2), token=None),
    Scenario(
        "purpose_marketing declared",
        608,
        "purpose_marketing",
        callee=_callee(3),
        token="tok-purpose",
        headers=("X-Call-Purpose: marketing",),
    ),
    # R1: a consent recorded for marketing, and no X-Call-Purpose: the consent's purpose governs.
    Scenario(
        "purpose_marketing from consent",
        608,
        "purpose_marketing",
        callee=_callee(5),
        token="tok-marketing",
    ),
    Scenario("callee_dnc", 608, "callee_dnc", callee=_callee(4), token="tok-dnc"),
    Scenario("caller_not_filed", 403, "caller_not_filed", caller="95577"),
    Scenario("caller_subscriber_number", 403, "caller_subscriber_number", caller="13912345678"),
    Scenario("caller_anonymous", 433, "caller_anonymous", anonymous_from=True),
    Scenario("caller_anonymous privacy", 433, "caller_anonymous", headers=("Privacy: id",)),
    Scenario(
        "caller_identity_mismatch",
        403,
        "caller_identity_mismatch",
        headers=(f"P-Asserted-Identity: <sip:{PAI_OTHER}@[local_ip];user=phone>",),
    ),
    Scenario(
        "quiet_hours",
        603,
        "quiet_hours",
        caller="95510",
        callee=_callee(6),
        token="tok-quiet",
        source=SRC_QUIET,
        retry_after=True,
    ),
    Scenario(
        "callee_daily_cap",
        603,
        "callee_daily_cap",
        caller="95520",
        callee=_callee(7),
        token="tok-cap",
        source=SRC_CAP,
        retry_after=True,
        before=("tok-cap",),
    ),
    Scenario("enterprise_suspended", 403, "enterprise_suspended", source=SRC_SUSPENDED),
    Scenario("enterprise_blacklisted", 403, "enterprise_blacklisted", source=SRC_BLACKLISTED),
]
ADMITTED = sum(len(s.before) + (s.code == 200) for s in SCENARIOS)  # calls the next hop sees


def _quiet_window(now: datetime) -> tuple[str, datetime]:
    """A window from 30 min before to ~60 min after ``now`` (Shanghai), and the instant it ends."""
    local = now.astimezone(SHANGHAI)
    start = local - timedelta(minutes=30)
    end = (local + timedelta(minutes=60)).replace(second=0, microsecond=0)
    return f"{start:%H:%M}-{end:%H:%M}", end


def _policy(quiet_hours: str) -> dict[str, list[dict[str, object]]]:
    def ent(eid: str, **kw: object) -> dict[str, object]:
        return {
            "enterprise_id": eid,
            "name": eid,
            "status": "active",
            "quiet_hours": "none",
            "callee_daily_cap": 0,
            **kw,
        }

    def trunk(tid: str, eid: str, source: str) -> dict[str, object]:
        return {
            "trunk_id": tid,
            "enterprise_id": eid,
            "sources": f"{source}/32",
            "max_cps": 0,
            "status": "active",
        }

    def filing(number: str, eid: str) -> dict[str, object]:
        return {
            "number": number,
            "enterprise_id": eid,
            "carrier": "x",
            "usage": "callback",
            "inbound": True,
            "outbound": True,
            "status": "active",
        }

    def consent(
        token: str, callee: str, eid: str = "E-OK", purpose: str = "callback"
    ) -> dict[str, object]:
        return {
            "token": token,
            "callee": callee,
            "enterprise_id": eid,
            "purpose": purpose,
            "granted_at": "2026-01-01T00:00:00+00:00",
            "evidence_ref": f"rec://{token}",
        }

    return {
        "enterprises": [
            ent("E-OK"),
            ent("E-SUSP", status="suspended"),
            ent("E-BAD", status="blacklisted"),
            ent("E-QUIET", quiet_hours=quiet_hours),
            ent("E-CAP", callee_daily_cap=1),
        ],
        "trunks": [
            trunk("T-OK", "E-OK", SRC_OK),
            trunk("T-SUSP", "E-SUSP", SRC_SUSPENDED),
            trunk("T-BAD", "E-BAD", SRC_BLACKLISTED),
            trunk("T-QUIET", "E-QUIET", SRC_QUIET),
            trunk("T-CAP", "E-CAP", SRC_CAP),
        ],
        "filings": [
            filing(CALLER, "E-OK"),
            filing(PAI_OTHER, "E-OK"),
            filing("95510", "E-QUIET"),
            filing("95520", "E-CAP"),
        ],
        "consents": [
            consent("tok-ok", _callee(1)),
            consent("tok-purpose", _callee(3)),
            consent("tok-dnc", _callee(4)),
            consent("tok-marketing", _callee(5), purpose="marketing"),
            consent("tok-quiet", _callee(6), "E-QUIET"),
            consent("tok-cap", _callee(7), "E-CAP"),
        ],
        "dnc": [{"number": _callee(4), "scope": "all"}],
    }


# ------------------------------------------------------------------ scenarios


def reject_scenario(tmp: Path, name: str, s: Scenario) -> Path:
    """tests/sipp/uac_reject.xml with the expected status and this scenario's header changes."""
    xml = (SIPP_DIR / "uac_reject.xml").read_text().replace("__CODE__", str(s.code))
    if s.token is None:
        line = "      X-Consent-Token: [field2]\n"
        assert line in xml
        xml = xml.replace(line, "")
    if s.anonymous_from:
        from_line = "From: <sip:[field0]@[local_ip]:[local_port];user=phone>;tag="
        assert xml.count(from_line) == 2  # the INVITE's and the ACK's
        xml = xml.replace(from_line, 'From: "Anonymous" <sip:anonymous@anonymous.invalid>;tag=')
    if s.headers:
        anchor = "      Max-Forwards: 70\n"
        extra = "".join(f"      {h}\n" for h in s.headers)
        xml = xml.replace(anchor, anchor + extra, 1)  # the INVITE only
    path = tmp / f"uac_reject_{re.sub(r'[^a-z0-9]+', '_', name)}.xml"
    path.write_text(xml)
    return path


@dataclass
class Outcome:
    returncode: int
    finals: list[str] = field(default_factory=list)  # final responses received, in order
    output: str = ""

    @property
    def last(self) -> str:
        return self.finals[-1] if self.finals else ""


def received_finals(message_file: Path) -> list[str]:
    """The final (≥ 200) responses in a SIPp ``-trace_msg`` file."""
    try:
        text = message_file.read_text(errors="replace")
    except OSError:
        return []
    finals = []
    for block in re.split(r"^-{20,}.*$", text, flags=re.M):
        head, _, body = block.strip("\r\n").partition("\n")
        if "message received" not in head:
            continue
        msg = body.lstrip("\r\n")
        m = re.match(r"SIP/2\.0 (\d{3}) ", msg)
        if m and int(m.group(1)) >= 200:
            finals.append(msg)
    return finals


def run_caller(tmp: Path, gw_port: int, scenario: Path, s: Scenario, token: str | None) -> Outcome:
    """One SIPp call from ``s.source`` with fields caller;callee;token."""
    tag = f"{re.sub(r'[^a-z0-9]+', '_', scenario.stem)}-{time.monotonic_ns()}"
    inf = write_inf(tmp / f"{tag}.csv", [[s.caller, s.callee, token or ""]])
    messages = tmp / f"{tag}-messages.log"
    args = [
        "sipp", f"127.0.0.1:{gw_port}",
        "-sf", str(scenario),
        "-inf", str(inf),
        "-i", s.source, "-p", str(free_port()),
        "-t", "u1", "-m", "1", "-r", "1", "-l", "1",
        "-timeout", f"{SIPP_TIMEOUT_S}s", "-timeout_error",
        "-recv_timeout", "5000",
        "-nostdin", "-default_behaviors", "all,-abortunexp",
        "-trace_msg", "-message_file", str(messages),
        "-trace_err", "-error_file", str(tmp / f"{tag}-errors.log"),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, timeout=SIPP_TIMEOUT_S + 15, cwd=tmp)
    out = (proc.stdout + proc.stderr).decode(errors="replace")[-2000:]
    return Outcome(proc.returncode, received_finals(messages), out)


def play(tmp: Path, gw_port: int, s: Scenario) -> list[Outcome]:
    """The admitted calls ``s`` needs first, then its own call."""
    d = tmp / re.sub(r"[^a-z0-9]+", "_", s.name)
    d.mkdir()
    outcomes = [run_caller(d, gw_port, SIPP_DIR / "uac.xml", s, tok) for tok in s.before]
    scenario = SIPP_DIR / "uac.xml" if s.code == 200 else reject_scenario(d, s.name, s)
    outcomes.append(run_caller(d, gw_port, scenario, s, s.token))
    return outcomes


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def module_redis_url(redis_server: EmbeddedRedis) -> str:
    """The session's redis-server, flushed once for this module (the scenarios share the data)."""
    import redis

    client = redis.Redis(unix_socket_path=str(redis_server.sock))
    client.flushall()
    client.close()
    return redis_server.url


@dataclass
class World:
    gateway: GatewayProc
    uas: SippUas
    quiet_end: datetime  # when E-QUIET's window ends
    results: dict[str, tuple[float, list[Outcome]]]  # scenario -> (time it ran, outcomes)


@pytest.fixture(scope="module")
def world(module_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("reasons")
    window, quiet_end = _quiet_window(datetime.now(UTC))
    load_policy(module_redis_url, **_policy(window))
    uas = SippUas(tmp).start()
    gw = GatewayProc(module_redis_url, tmp / "gw", [uas.hop], workers=2)
    gw.state_dir.mkdir()
    try:
        gw.start()
        results: dict[str, tuple[float, list[Outcome]]] = {}
        with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
            futures = {s.name: (time.time(), pool.submit(play, tmp, gw.port, s)) for s in SCENARIOS}
            for name, (started, fut) in futures.items():
                results[name] = (started, fut.result())
        yield World(gw, uas, quiet_end, results)
    finally:
        gw.stop()
        uas.stop()


# ------------------------------------------------------------------ tests


def _header(msg: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}:[ \t]*(.*?)\r?$", msg, re.M | re.I)
    return m.group(1) if m else None


@pytest.mark.parametrize("s", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_reason_family(world: World, s: Scenario) -> None:
    started, outcomes = world.results[s.name]
    for earlier in outcomes[:-1]:  # the admitted calls placed first
        assert earlier.returncode == 0 and earlier.last.startswith("SIP/2.0 200 "), earlier.output
    out = outcomes[-1]
    final = out.last
    assert out.returncode == 0, f"SIPp failed: {out.output}\n{final}"
    assert len(out.finals) >= 1, out.output
    status = int(final.split(" ", 2)[1])
    assert status == s.code, final
    if s.reason is None:  # admitted: 200 for the INVITE (and for the BYE), no Reason
        assert all(f.startswith("SIP/2.0 200 ") for f in out.finals), out.finals
        assert any(_header(f, "CSeq") == "1 INVITE" for f in out.finals), out.finals
        assert all(_header(f, "Reason") is None for f in out.finals), out.finals
        return
    assert _header(final, "Reason") == f'SIP;cause={s.code};text="{s.reason}"', final
    # Every final for this INVITE (retransmissions included) is the same rejection.
    assert all(f.split("\n", 1)[0] == final.split("\n", 1)[0] for f in out.finals)
    retry = _header(final, "Retry-After")
    if not s.retry_after:
        assert retry is None, final
        return
    assert retry is not None and retry.isdigit(), final
    seconds = int(retry)
    if s.reason == "quiet_hours":
        expected = world.quiet_end.astimezone(UTC) - datetime.fromtimestamp(started, UTC)
    else:  # a daily cap: until the callee's (Shanghai) midnight
        local = datetime.fromtimestamp(started, SHANGHAI)
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), SHANGHAI)
        expected = midnight - local
    assert abs(seconds - math.ceil(expected.total_seconds())) <= 15, (seconds, expected, final)
    assert seconds >= 1


def test_only_admitted_calls_reach_the_next_hop(world: World) -> None:
    deadline = time.monotonic() + 3
    while world.uas.calls_seen() < ADMITTED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert world.uas.calls_seen() == ADMITTED
    time.sleep(1.2)  # metrics are exported once a second
    rejected = sum(1 for s in SCENARIOS if s.code != 200)
    assert world.gateway.metric("cag_decisions_total", decision="admit") == ADMITTED
    assert world.gateway.metric("cag_decisions_total", decision="reject") == rejected
