"""``python -m bench replay FILE``: the INVITEs of a capture (or SIPp CSV) placed again through the gateway.

A sweep tells how fast; a replay tells how a given day's traffic would have
been decided, at its own pace (``--speed`` scales time). The set-up is the
sweep's (``bench.sweep.Rig``: Redis with the generated policy world, a SIPp
callee, ``cag serve --workers 2``), so a capture made by ``gen-pcap``
replays to the decisions it was generated with; a real capture's numbers
will mostly meet "not filed" unless its data is loaded by hand.

The caller side is this module's own small UAC on asyncio rather than SIPp:
SIPp cannot send at recorded, uneven times. It re-creates each call from
the captured fields (caller, callee, PAI, consent token, purpose; fresh
Call-ID and branch), retransmits the INVITE per RFC 3261 timer A until the
first response, answers a 2xx with ACK and BYE along the Record-Route and a
rejection with ACK. Latency is INVITE → final response from a tcpdump
capture of its port when one can be taken (as in the sweep), else from its
own send / receive clock (µs, but including its event loop's delays).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from bench import capture, dataset, pcap, peers, report, stats
from bench.pcap import Invite, parse_head, reason_text
from bench.sweep import SETTLE_S, Rig, _decisions, _delta, histogram_delta, say

T1 = 0.5
FINAL_TIMEOUT = 10.0  # s without a final response: the call failed


@dataclass
class ReplayConfig:
    file: Path
    speed: float = 1.0
    rate: float = 100.0  # calls/s for a CSV (no timing in it)
    limit: int = 0
    spec: dataset.DatasetSpec = field(default_factory=lambda: dataset.DatasetSpec(consents=100_000))
    workers: int = 2
    out: Path | None = None
    gateway_args: tuple[str, ...] = ()


def load_invites(path: Path, rate: float) -> list[Invite]:
    """pcap / pcapng by content, SIPp injection CSV by extension."""
    if path.suffix.lower() in (".csv", ".inf", ".txt"):
        return pcap.read_inf(path, rate)
    return pcap.read_invites(path)


@dataclass
class _Call:
    n: int
    invite: Invite
    call_id: str
    branch: str
    sent_at: float = 0.0
    first_response: bool = False
    final_status: int | None = None
    final_at: float = 0.0
    reason: str = ""
    bye_done: bool = False
    retransmits: int = 0


class Replayer(asyncio.DatagramProtocol):
    """The UAC: sends INVITEs at their times, answers what comes back, records the outcome."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.calls: dict[str, _Call] = {}
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport: no isinstance here.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = int(transport.get_extra_info("sockname")[1])

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.target)

    def invite_bytes(self, c: _Call) -> bytes:
        inv, host, port = c.invite, self.target[0], self.target[1]
        extra = ""
        if inv.pai:
            extra += f"P-Asserted-Identity: <sip:{inv.pai}@127.0.0.1;user=phone>\r\n"
        if inv.token:
            extra += f"X-Consent-Token: {inv.token}\r\n"
        if inv.purpose:
            extra += f"X-Call-Purpose: {inv.purpose}\r\n"
        return (
            f"INVITE sip:{inv.callee}@{host}:{port};user=phone SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={c.branch};rport\r\n"
            f"From: <sip:{inv.caller}@127.0.0.1;user=phone>;tag=rp{c.n}\r\n"
            f"To: <sip:{inv.callee}@{host};user=phone>\r\n"
            f"Call-ID: {c.call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:replay@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
            f"{extra}Content-Length: 0\r\n\r\n"
        ).encode()

    async def place(self, c: _Call) -> None:
        self.calls[c.call_id] = c
        c.sent_at = time.perf_counter()
        data = self.invite_bytes(c)
        self._send(data)
        wait = T1
        while not c.first_response and wait <= 4.0:  # timer A, until any response
            await asyncio.sleep(wait)
            if c.first_response:
                break
            c.retransmits += 1
            self._send(data)
            wait *= 2

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        now = time.perf_counter()
        head = parse_head(data)
        if head is None or head.status is None:
            return
        c = self.calls.get(head.call_id)
        if c is None:
            return
        c.first_response = True
        method = head.cseq_method
        if method == "INVITE" and head.status >= 200:
            first = c.final_status is None
            if first:
                c.final_status, c.final_at = head.status, now
                c.reason = reason_text(head) or ("admitted" if head.status < 300 else str(head.status))
            to = head.headers.get("to", "")
            if head.status >= 300:
                self._send(self._in_dialog("ACK", c, 1, c.branch, to, "", None))
            elif first:
                routes = self._routes(data)
                contact = head.headers.get("contact", "").split("<", 1)[-1].split(">", 1)[0]
                self._send(self._in_dialog("ACK", c, 1, f"{c.branch}-ack", to, routes, contact))
                self._send(self._in_dialog("BYE", c, 2, f"{c.branch}-bye", to, routes, contact))
        elif method == "BYE" and head.status >= 200:
            c.bye_done = True

    @staticmethod
    def _routes(data: bytes) -> str:
        """Route headers for in-dialog requests: the Record-Route set as received (a UAC keeps its order)."""
        out = []
        for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"record-route":
                out.append(f"Route: {value.decode().strip()}\r\n")
        return "".join(out)

    def _in_dialog(self, method: str, c: _Call, cseq: int, branch: str, to: str, routes: str,
                   contact: str | None) -> bytes:
        inv = c.invite
        uri = contact or f"sip:{inv.callee}@{self.target[0]}:{self.target[1]};user=phone"
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
            f"{routes}From: <sip:{inv.caller}@127.0.0.1;user=phone>;tag=rp{c.n}\r\n"
            f"To: {to}\r\nCall-ID: {c.call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()


async def replay(invites: list[Invite], target: tuple[str, int], speed: float,
                 port: int = 0, progress: bool = True) -> tuple[list[_Call], float]:
    """Place every INVITE at ``(ts - ts0) / speed`` after the start; wait for the outcomes."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: Replayer(target), local_addr=("127.0.0.1", port))
    assert isinstance(proto, Replayer)
    calls = [_Call(n, inv, f"rp{n}-{time.time_ns()}@127.0.0.1", f"z9hG4bK-rp{n}-{time.time_ns() % 10**9}")
             for n, inv in enumerate(invites)]
    tasks: list[asyncio.Task[None]] = []
    t0 = loop.time()
    ts0 = invites[0].ts if invites else 0.0
    last = t0
    try:
        for c in calls:
            due = t0 + (c.invite.ts - ts0) / speed
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(proto.place(c)))
            if progress and loop.time() - last >= 2.0:
                last = loop.time()
                done = sum(1 for x in calls if x.final_status is not None)
                say(f"  replay t={last - t0:6.1f}s  sent {c.n + 1:,}/{len(calls):,}  answered {done:,}")
        deadline = loop.time() + FINAL_TIMEOUT
        while loop.time() < deadline:
            if all(c.final_status is not None and (c.final_status >= 300 or c.bye_done) for c in calls):
                break
            await asyncio.sleep(0.05)
        elapsed = loop.time() - t0
    finally:
        for t in tasks:
            t.cancel()
        if proto.transport is not None:
            proto.transport.close()
    return calls, elapsed


def run_replay(cfg: ReplayConfig) -> Path:
    invites = load_invites(cfg.file, cfg.rate)
    if cfg.limit:
        invites = invites[: cfg.limit]
    if not invites:
        raise SystemExit(f"bench: no INVITE found in {cfg.file}")
    span = invites[-1].ts - invites[0].ts
    out = (cfg.out or report.new_results_dir("replay")).resolve()  # absolute: see Sweep.__init__
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    say(f"bench: {len(invites):,} INVITEs over {span:.1f} s in {cfg.file}; replaying at x{cfg.speed:g} "
        f"(~{span / cfg.speed:.1f} s); results in {out}")
    rig = Rig(work, cfg.spec, workers=cfg.workers, gateway_args=cfg.gateway_args)
    no_capture = capture.available()
    cap: capture.Capture | None = None
    started = time.time()
    try:
        setup = rig.start()
        assert rig.gw is not None
        port = peers.free_port()
        pcap_path = work / "replay.pcap"
        if not no_capture:
            cap = capture.Capture(pcap_path, port).start()
        pids = rig.pids()
        cpu0 = {k: sum(stats.cpu_seconds(p) for p in v) for k, v in pids.items()}
        m0 = rig.gw.metrics()
        calls, elapsed = asyncio.run(replay(invites, ("127.0.0.1", rig.gw.port), cfg.speed, port))
        cpu1 = {k: sum(stats.cpu_seconds(p) for p in v) for k, v in pids.items()}
        time.sleep(SETTLE_S)
        m1 = rig.gw.metrics()
        cap_stats = cap.stop() if cap is not None else {}
    finally:
        try:
            if cap is not None:
                cap.stop()
        finally:
            rig.stop()
    own = stats.percentiles([(c.final_at - c.sent_at) * 1000 for c in calls if c.final_status is not None])
    latency: dict[str, Any] = {**own, "source": "replayer's own clock (perf_counter)"}
    if cap is not None and pcap_path.exists():
        answered, _ = pcap.latencies(pcap_path)
        latency = {**stats.percentiles([a.latency_ms for a in answered]), "source": "loopback capture (tcpdump)"}
        pcap_path.unlink(missing_ok=True)
    by_reason = Counter(c.reason for c in calls if c.final_status is not None)
    failed = sum(1 for c in calls if c.final_status is None)
    gw_cpu = cpu1["gateway_parent"] + cpu1["gateway_workers"] - cpu0["gateway_parent"] - cpu0["gateway_workers"]
    rep: dict[str, Any] = {
        "schema": "cag-bench-replay/1",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "file": str(cfg.file),
        "machine": report.machine(),
        "config": {"speed": cfg.speed, "csv_rate": cfg.rate, "limit": cfg.limit, "workers": cfg.workers,
                   "dataset": asdict(cfg.spec), "gateway_args": list(cfg.gateway_args)},
        "setup": setup,
        "invites": len(invites),
        "capture_span_s": round(span, 3),
        "replay_s": round(elapsed, 3),
        "answered": len(calls) - failed,
        "failed": failed,
        "retransmissions": sum(c.retransmits for c in calls),
        "finals": dict(Counter(str(c.final_status) for c in calls if c.final_status is not None)),
        "decisions_on_wire": dict(by_reason),
        "decisions": {k: int(v) for k, v in _delta(_decisions(m1), _decisions(m0)).items()},
        "latency_ms": latency,
        "replayer_latency_ms": own,
        "decision_ms": histogram_delta(m1, m0, "cag_decision_seconds"),
        "redis_ms": histogram_delta(m1, m0, "cag_redis_seconds"),
        "capture": cap_stats,
        "cpu_seconds": {k: round(cpu1[k] - cpu0[k], 3) for k in cpu0},
        "gateway_cpu_us_per_call": round(gw_cpu / max(1, len(calls)) * 1e6, 1),
    }
    rep["plots"] = report.plot_decisions(out, rep["decisions_on_wire"])
    path = report.write_json(out / "report.json", rep)
    say(f"bench: replayed {len(calls):,} calls in {elapsed:.1f} s: {failed} without a final response")
    for reason, n in by_reason.most_common():
        say(f"  {reason:28} {n:>8,}")
    p = " / ".join(f"{latency.get(k, float('nan')):.3f}" for k in ("p50", "p90", "p99", "p99.9"))
    say(f"  latency p50/p90/p99/p99.9 {p} ms ({latency['source']})")
    say(f"\nbench: report {path}")
    return path
