"""Micro-benchmark: CPU per admitted call through the sans-IO proxy core (no I/O, no policy).

One call = INVITE in + admit decision (100 up, INVITE down), 180 and 200 back,
ACK and BYE along the Record-Route, 200 for the BYE: what the gateway does per
call on the wire, minus sockets and Redis. Only the core's own calls are
timed; building the test messages is not. Prints the best of ``--repeat`` runs,
the one least disturbed by other processes. Run: ``python -m bench.proxy_core``.
"""

from __future__ import annotations

import argparse
import time

from gateway.proxy import Admit
from gateway.sip import parse
from policy.decision import admitted
from tests.unit.test_proxy_support import HOP1, TRUNK, invite, make_core, request, respond, sends

ADMIT = admitted(trunk_id="t-a")


def run(calls: int) -> tuple[float, float]:
    """Return (µs of core CPU per call, µs per INVITE parse)."""
    core = make_core()
    spent = 0.0
    now = 1000.0
    inv = b""
    for i in range(calls):
        inv = invite(call_id=f"c{i}@x", branch=f"z9hG4bK-{i}-1")
        t0 = time.perf_counter()
        acts = core.receive(inv, TRUNK, "udp", None, now)
        adm = next(a for a in acts if isinstance(a, Admit))
        out = core.decided(adm.key, ADMIT, now)
        spent += time.perf_counter() - t0
        fwd = sends(out)[1].data
        r180 = respond(fwd, 180, "Ringing")
        r200 = respond(fwd, 200, "OK")
        t0 = time.perf_counter()
        core.receive(r180, HOP1, "udp", None, now, True)
        core.receive(r200, HOP1, "udp", None, now, True)
        spent += time.perf_counter() - t0
        rr = next(x for x in fwd.split(b"\r\n") if x.startswith(b"Record-Route")).split(b": ", 1)[1].decode()
        common = {"call_id": f"c{i}@x", "to_tag": "uas-tag-1", "routes": (rr,), "uri": "sip:uas@10.0.0.99:5070"}
        ack = request("ACK", branch=f"z9hG4bK-{i}-5", **common)
        bye = request("BYE", branch=f"z9hG4bK-{i}-7", cseq=2, **common)
        t0 = time.perf_counter()
        core.receive(ack, TRUNK, "udp", None, now)
        fwd_bye = sends(core.receive(bye, TRUNK, "udp", None, now))[0]
        spent += time.perf_counter() - t0
        b200 = respond(fwd_bye.data, 200)
        t0 = time.perf_counter()
        core.receive(b200, HOP1, "udp", None, now, True)
        spent += time.perf_counter() - t0
        now += 0.001
    t0 = time.perf_counter()
    for _ in range(calls):
        parse(inv)
    return spent / calls * 1e6, (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5, help="best of this many runs (the least disturbed)")
    args = ap.parse_args()
    per_call, per_parse = min(run(args.calls) for _ in range(args.repeat))
    print(f"core per call: {per_call:.1f} µs; parse INVITE {per_parse:.1f} µs")


if __name__ == "__main__":
    main()
