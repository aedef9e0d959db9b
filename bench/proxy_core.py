"""Micro-benchmark: CPU per admitted call through the sans-IO proxy core (no I/O, no policy).

One call = INVITE in + admit decision (100 up, INVITE down), 180 and 200 back,
ACK and BYE along the Record-Route, 200 for the BYE: what the gateway does per
call on the wire, minus sockets and Redis.

The calls are first *recorded* (the test messages built, the core's answers
read to build the next message), then *replayed* into a fresh core with the
same random seed, which mints the same branches and tokens, so the recorded
messages are valid for it. Only the replay is measured, and it runs nothing but
core calls: the figure is thread CPU time (``time.thread_time``, not
wall-clock: the machine's cores are shared), best of ``--repeat`` replays.
``--by-kind`` times each message kind separately (adds timer overhead per message).

Instruction counts, which do not depend on what else runs on the box:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.proxy_core --repeat 1
    ... the same with --repeat 0; (difference) / --calls = instructions per call

``--memory`` also replays once under tracemalloc and prints what the core
still holds per call once every call has ended (BYE answered): the tomb each
answered call lingers as (RFC 6026, 32 s; gateway/proxy/linger.py), its minted
Record-Route token and the route-map entry of the BYE.

Run: ``python -m bench.proxy_core [--calls 3000] [--repeat 5] [--by-kind] [--memory]``.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable

from gateway.proxy import Admit, ProxyCore
from gateway.sip import parse
from policy.decision import Decision, admitted
from tests.unit.proxy._support import HOP1, TRUNK, invite, make_core, request, respond, sends

ADMIT = admitted(trunk_id="t-a")
KINDS = ("INVITE", "decision", "180", "200", "ACK", "BYE", "200 BYE")

# One core call: (kind, data or Admit key, source, private, now).
Step = tuple[str, bytes | str, tuple[str, int], bool, float]


def record(calls: int) -> list[Step]:
    """Run the calls once, keeping every input the core got, in order."""
    core = make_core()
    steps: list[Step] = []
    now = 1000.0

    def feed(kind: str, data: bytes, source: tuple[str, int], private: bool = False) -> list[object]:
        steps.append((kind, data, source, private, now))
        return list(core.receive(data, source, "udp", None, now, private))

    for i in range(calls):
        acts = feed("INVITE", invite(call_id=f"c{i}@x", branch=f"z9hG4bK-{i}-1"), TRUNK)
        adm = next(a for a in acts if isinstance(a, Admit))
        steps.append(("decision", adm.key, TRUNK, False, now))
        fwd = sends([*core.decided(adm.key, ADMIT, now)])[1].data
        feed("180", respond(fwd, 180, "Ringing"), HOP1, True)
        feed("200", respond(fwd, 200, "OK"), HOP1, True)
        rr = next(x for x in fwd.split(b"\r\n") if x.startswith(b"Record-Route")).split(b": ", 1)[1].decode()
        common = {"call_id": f"c{i}@x", "to_tag": "uas-tag-1", "routes": (rr,), "uri": "sip:uas@10.0.0.99:5070"}
        feed("ACK", request("ACK", branch=f"z9hG4bK-{i}-5", **common), TRUNK)
        bye = sends(feed("BYE", request("BYE", branch=f"z9hG4bK-{i}-7", cseq=2, **common), TRUNK))[0]
        feed("200 BYE", respond(bye.data, 200), HOP1, True)
        now += 0.001
    return steps


def _call(core: ProxyCore, step: Step, decision: Decision = ADMIT) -> None:
    _, data, source, private, now = step
    if isinstance(data, str):
        core.decided(data, decision, now)
    else:
        core.receive(data, source, "udp", None, now, private)


def replay(steps: list[Step], by_kind: dict[str, float] | None = None) -> float:
    """Feed the recorded steps to a fresh core; thread CPU seconds spent in it."""
    core = make_core()
    clock: Callable[[], float] = time.thread_time
    gc.collect()
    if by_kind is None:
        call = _call
        t0 = clock()
        for step in steps:
            call(core, step)
        return clock() - t0
    total = 0.0
    for step in steps:
        t0 = clock()
        _call(core, step)
        spent = clock() - t0
        by_kind[step[0]] = by_kind.get(step[0], 0.0) + spent
        total += spent
    return total


def held_per_call(steps: list[Step], calls: int) -> float:
    """Bytes a fresh core still holds per call after the replay (tracemalloc, after a collection)."""
    core = make_core()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for step in steps:
            _call(core, step)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / calls
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5, help="best of this many replays (0: record only)")
    ap.add_argument("--by-kind", action="store_true", help="also time each message kind (best per kind)")
    ap.add_argument("--memory", action="store_true", help="also print the bytes held per lingering call")
    args = ap.parse_args()
    steps = record(args.calls)
    if args.repeat <= 0:
        return
    best = min(replay(steps) for _ in range(args.repeat))
    inv = steps[0][1]
    assert isinstance(inv, bytes)
    t0 = time.thread_time()
    for _ in range(args.calls):
        parse(inv)
    per_parse = (time.thread_time() - t0) / args.calls * 1e6
    print(f"core per call: {best / args.calls * 1e6:.1f} µs CPU; parse INVITE {per_parse:.1f} µs")
    if args.by_kind:
        kinds: dict[str, float] = {}
        for _ in range(args.repeat):
            one: dict[str, float] = {}
            replay(steps, one)
            for k, v in one.items():
                kinds[k] = min(kinds.get(k, v), v)
        print("  " + ", ".join(f"{k} {kinds[k] / args.calls * 1e6:.1f}" for k in KINDS) + " (µs each)")
    if args.memory:
        print(f"  held per lingering call: {held_per_call(steps, args.calls):.0f} B")


if __name__ == "__main__":
    main()
