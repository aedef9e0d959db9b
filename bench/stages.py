"""Per-stage CPU budget of one admitted call, for the in-process parts measurable without sockets.

Issue 13 asks where the ~1,100 µs of gateway CPU per call goes; the sweep
measures the whole, this splits the part that runs in Python without I/O.
Each stage replays what the worker does for *one admitted call* (INVITE,
100/180/200 up, ACK, BYE, 200 for the BYE) and reports thread CPU µs per
call, best of ``--repeat`` runs of ``--calls`` calls (thread CPU, not wall
clock: the machine's cores are shared, and the best run is the least
disturbed):

- ``parse``: ``gateway.sip.parse`` of the call's six messages (a subset of
  ``core``, which parses too: not added to the total).
- ``core``: ``ProxyCore.receive`` / ``decided`` for every message of the call
  (``bench.proxy_core``'s recorded replay).
- ``rules``: ``policy.rules.evaluate_local`` + ``finish`` for an admitted call
  (trunk, caller id, filing, purpose, quiet hours, caps; the store's answer given).
- ``redis_encode``: the store's FCALL commands of an admission (``cag_admit``,
  token lookup, caller and trunk ``cag_rate``) built by ``PolicyStore`` and
  packed by hiredis into one pipeline write.
- ``redis_decode``: their replies read by ``hiredis.Reader`` and turned into
  results by the store's parsers (redis-py's asyncio ``read_response``
  around each, and the socket, are not in it).
- ``metrics``: the worker's per-call prometheus-client calls in multiprocess
  (mmap) mode (INVITES, DECISION_SECONDS, DECISIONS, REDIS_SECONDS) and its
  per-message counters (13 ``Counter`` increments).
- ``audit``: ``AuditSink.decision`` + ``outcome`` (the worker's appends), then
  the flusher's ``_build`` and ``pack`` of both entries.
- ``steering``: ``steer.owner`` on the call's three trunk requests, plus
  ``wrap`` / ``unwrap`` of each (as if all were steered; with two workers
  about half are).

- ``worker``: the worker's adapter around the core for the whole call
  (``Worker._receive`` for each message, the Admit batched and decided
  through ``_flush_admits`` / ``_decided`` / ``_finish``, the one core timer,
  the Meter, the audit sink's appends, and at the end the expiry of every
  transaction through ``_on_timer``) with the real compiled core, an
  engine that decides at once and ``_send`` counting instead of sending.
  It includes ``core``: ``worker`` - ``core`` is the adapter's own cost.
- ``udp``: the system calls of a call's datagrams on loopback: 7 ``sendto``
  and 7 reads through ``UdpReader`` (a call has 6 in and 7 out; the
  receive side reads one more than it needs, the send side is exact).

Not here: the Redis round trip and the engine's futures per decision
(``python -m bench admission --batch 1,8,32`` measures those against a
real redis-server).

Run: ``python -m bench stages [--calls 2000] [--repeat 5] [--json]``.

``--instructions`` counts instructions per call instead, with callgrind
(``apt-get install valgrind``): the same figure whatever else the machine
runs, so two builds compare on a busy box where CPU time swings by ±20 %.
Each stage's run goes through ``sys.call_tracing`` (a C function nothing else
calls), and callgrind collects only inside it and dumps after each.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = (
    "parse",
    "core",
    "rules",
    "redis_encode",
    "redis_decode",
    "metrics",
    "audit",
    "steering",
    "worker",
    "udp",
)
IN_TOTAL = ("core", "rules", "redis_encode", "redis_decode", "metrics", "audit", "steering")
# ``worker`` includes ``core``, ``metrics`` and the worker's part of ``audit``: not added to the total;
# ``worker`` - ``core`` is the adapter's own cost per call (dispatch, timers, counters, finishing).


@dataclass
class Stage:
    name: str
    setup: Callable[[int], Callable[[], None]]  # calls -> one timed run over that many calls


def _best(run_factory: Callable[[], Callable[[], None]], calls: int, repeat: int) -> float:
    """µs of thread CPU per call, best of ``repeat`` fresh runs."""
    best = float("inf")
    for _ in range(repeat):
        run = run_factory()
        gc.collect()
        t0 = time.thread_time()
        run()
        best = min(best, time.thread_time() - t0)
    return best / calls * 1e6


# ------------------------------------------------------------------ stages


def _messages(calls: int) -> list[bytes]:
    from bench.proxy_core import record

    return [s[1] for s in record(calls) if isinstance(s[1], bytes)]


def stage_parse(calls: int) -> Callable[[], Callable[[], None]]:
    from gateway.sip import parse

    msgs = _messages(calls)

    def factory() -> Callable[[], None]:
        def run() -> None:
            for m in msgs:
                parse(m)

        return run

    return factory


def stage_core(calls: int) -> Callable[[], Callable[[], None]]:
    from bench.proxy_core import _call, record
    from tests.unit.proxy._support import make_core

    steps = record(calls)

    def factory() -> Callable[[], None]:
        core = make_core()

        def run() -> None:
            for step in steps:
                _call(core, step)

        return run

    return factory


def _rules_world() -> tuple[Any, Any, Any, Any]:
    from policy.decision import Check
    from policy.rules import RuleConfig, StoreVerdict, evaluate_local
    from policy.rules.caps import CAP_NAMES
    from tests.unit.policy._fixtures import NOON, REF, call

    cfg = RuleConfig()
    attempt = call()
    local = evaluate_local(attempt, REF, NOON, cfg)
    assert local.failed is None, local.failed
    store = StoreVerdict(
        consent=Check("consent", "pass"),
        dnc=Check("dnc", "pass"),
        caps=tuple(Check(n, "pass") for n in CAP_NAMES),
        evidence_ref="ev-1",
        consent_purpose="callback",
    )
    return cfg, attempt, store, REF


def stage_rules(calls: int) -> Callable[[], Callable[[], None]]:
    from policy.rules import evaluate_local, finish
    from tests.unit.policy._fixtures import NOON

    cfg, attempt, store, ref = _rules_world()
    d = finish(attempt, evaluate_local(attempt, ref, NOON, cfg), store, cfg)
    assert d.admit, d

    def factory() -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                local = evaluate_local(attempt, ref, NOON, cfg)
                finish(attempt, local, store, cfg)

        return run

    return factory


class _Collect:
    """Stands in for the store's batcher: keeps (command, reply parser) instead of sending."""

    def __init__(self) -> None:
        self.out: list[tuple[tuple[Any, ...], Callable[[Any], Any] | None]] = []

    def submit(self, command: tuple[Any, ...], parse: Callable[[Any], Any] | None = None) -> Any:
        self.out.append((command, parse))
        return None


def _store() -> tuple[Any, _Collect]:
    from policy.store import PolicyStore

    store = PolicyStore(None, cluster=False)  # type: ignore[arg-type]  # never connects
    batch = _Collect()
    store._batcher = batch  # type: ignore[assignment]
    store._set_layers({"dnc": "1", "consents": "1"})  # one generation of each, as after a load
    return store, batch


def _admission_commands(store: Any, i: int) -> None:
    """The store calls of one admitted call, as ``PolicyEngine._submit`` makes them."""
    txn = f"txn-{i}"
    store.admit_callee(
        callee="+8613800138000", token="tok-1", enterprise_id="ent-a", purpose="callback",
        allowed_purposes=("callback", "service"), now_ms=1_773_115_200_000 + i, quiet_fail=False,
        daily_limit=3, total_limit=10, day="20260310", day_ttl=43_200, txn=txn,
    )
    store.token_callee("tok-1")
    store.rate("n", "+861058001234", limit=5, now_ms=1_773_115_200_000 + i, call_id=f"c{i}@x", txn=txn)
    store.rate("t", "t-a", limit=100, max_concurrent=500, now_ms=1_773_115_200_000 + i,
               call_id=f"c{i}@x", txn=txn)


# One pipeline's replies: cag_admit (10 fields), GET token -> callee, two cag_rate (5 fields).
_REPLY = (
    b"*10\r\n$-1\r\n$-1\r\n:1\r\n$4\r\nev-1\r\n$8\r\ncallback\r\n:1\r\n:1\r\n:1\r\n:0\r\n:0\r\n"
    b"$14\r\n+8613800138000\r\n"
    b"*5\r\n:1\r\n:0\r\n:1\r\n:0\r\n:0\r\n"
    b"*5\r\n:1\r\n:1\r\n:1\r\n:0\r\n:0\r\n"
)


def stage_redis_encode(calls: int) -> Callable[[], Callable[[], None]]:
    import hiredis

    pack = hiredis.pack_command

    def factory() -> Callable[[], None]:
        store, batch = _store()

        def run() -> None:
            for i in range(calls):
                batch.out.clear()
                _admission_commands(store, i)
                b"".join([pack(c) for c, _ in batch.out])

        return run

    return factory


def stage_redis_decode(calls: int) -> Callable[[], Callable[[], None]]:
    import hiredis

    store, batch = _store()
    _admission_commands(store, 0)
    parsers = [p for _, p in batch.out]

    def factory() -> Callable[[], None]:
        reader = hiredis.Reader()

        def run() -> None:
            for _ in range(calls):
                reader.feed(_REPLY)
                for p in parsers:
                    r = reader.gets()
                    if p is not None:
                        p(r)

        return run

    return factory


def _multiprocess_metrics() -> Any:
    """gateway.metrics as a worker has it: prometheus-client in multiprocess (mmap) mode."""
    if "prometheus_client" not in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cag-stages-prom-")
    from gateway import metrics

    return metrics


def stage_metrics(calls: int) -> Callable[[], Callable[[], None]]:
    """Per-call metrics as the worker records them: plain counters and the Meter
    (flushed to prometheus-client once a second, one flush per ``calls`` here)."""
    metrics = _multiprocess_metrics()

    def factory() -> Callable[[], None]:
        rx: Counter[str] = Counter()
        tx: Counter[str] = Counter()
        ent: Counter[tuple[str, str]] = Counter()
        meter = metrics.Meter()

        def run() -> None:
            count, observe = meter.count, meter.observe
            invites, decisions = metrics.INVITES, metrics.DECISIONS
            decision_s, redis_s = metrics.DECISION_SECONDS, metrics.REDIS_SECONDS
            for _ in range(calls):
                for _m in range(6):  # INVITE, 180, 200, ACK, BYE, 200 (BYE) received
                    rx["udp"] += 1
                for _m in range(7):  # 100, INVITE, 180, 200, ACK, BYE, 200 (BYE) sent
                    tx["udp"] += 1
                count(invites)
                observe(redis_s, 0.00031)
                observe(decision_s, 0.00042)
                count(decisions, "admit", "admitted")
                ent[("ent-a", "admit")] += 1
            meter.flush()

        return run

    return factory


def stage_audit(calls: int) -> Callable[[], Callable[[], None]]:
    from gateway.audit.record import pack
    from gateway.audit.sink import AuditSink
    from gateway.proxy.actions import Outcome
    from policy.rules import evaluate_local, finish
    from tests.unit.policy._fixtures import NOON

    cfg, attempt, store, ref = _rules_world()
    decision = finish(attempt, evaluate_local(attempt, ref, NOON, cfg), store, cfg)
    spool = Path(tempfile.mkdtemp(prefix="cag-stages-audit-"))

    def factory() -> Callable[[], None]:
        sink = AuditSink("redis://127.0.0.1:1", spool, buffer_max=10 * calls + 10, batch=10 * calls + 10)

        def run() -> None:
            for i in range(calls):
                rid = f"r{i}"
                sink.decision(rid, attempt, decision, 0.00042, "node-1", 0)
                sink.outcome(Outcome(rid, f"c{i}@x", 200, 1000.0 + i, 1010.0 + i))
                items, sink._buf = sink._buf, []
                for e in sink._build(items):
                    pack(e)

        return run

    return factory


def stage_steering(calls: int) -> Callable[[], Callable[[], None]]:
    from bench.proxy_core import record
    from gateway.proxy import steer

    requests = [(s[2], s[1]) for s in record(calls) if s[0] in ("INVITE", "ACK", "BYE")]
    assert all(isinstance(d, bytes) for _, d in requests)

    def factory() -> Callable[[], None]:
        def run() -> None:
            owner, wrap, unwrap = steer.owner, steer.wrap, steer.unwrap
            for source, data in requests:
                owner(data, 2)  # type: ignore[arg-type]
                unwrap(wrap(source, data))  # type: ignore[arg-type]

        return run

    return factory


def stage_worker(calls: int) -> Callable[[], Callable[[], None]]:
    """The worker's adapter for one admitted call around the real core (see the docstring)."""
    import asyncio

    from bench.proxy_core import ADMIT, record
    from gateway import worker as worker_mod
    from gateway.audit.sink import AuditSink
    from gateway.config import Settings
    from tests.unit.proxy._support import make_core

    worker_mod.metrics = _multiprocess_metrics()
    steps = record(calls)
    spool = Path(tempfile.mkdtemp(prefix="cag-stages-worker-"))

    class _Engine:
        def admit_many(self, items: Any, on_decided: Any) -> None:
            for token, _call in items:
                on_decided(token, ADMIT)

        def release(self, trunk_id: str, call_id: str) -> None:
            pass

    loop = asyncio.new_event_loop()

    def factory() -> Callable[[], None]:
        async def make() -> Any:
            spec = worker_mod.WorkerSpec(0, Settings(), "redis://unused", b"k", [], "gw")
            w = worker_mod.Worker(spec)
            w.engine = _Engine()
            w.audit = AuditSink(
                "redis://127.0.0.1:1", spool, buffer_max=10 * calls + 10, batch=10 * calls + 10
            )
            w.core = make_core()
            sent = [0]

            def send(a: Any) -> None:
                sent[0] += 1

            w._send = send  # type: ignore[method-assign]
            return w

        w = loop.run_until_complete(make())
        clock = [0.0]
        worker_mod.core_time = lambda: clock[0]
        receive, arm = w._receive, w._arm

        def run() -> None:
            for kind, data, source, private, now in steps:
                clock[0] = now
                if kind == "decision":
                    w._flush_admits()  # what the loop's call_soon runs after this turn's reads
                    continue
                receive(data, source, "udp", None, private)  # type: ignore[arg-type]
                arm()  # UdpReader's ``after``: a read pass of one datagram (an idle worker's worst case)
            loop.run_until_complete(asyncio.sleep(0))  # the scheduled (now empty) flushes
            clock[0] += 64.0  # every transaction's timers due: their expiry is per-call work too
            w._on_timer()
            if w._timer is not None:
                w._timer.cancel()

        return run

    return factory


def stage_udp(calls: int) -> Callable[[], Callable[[], None]]:
    """7 loopback sendto + 7 reads through ``UdpReader._readable`` per call (the call's datagrams)."""
    import socket

    from bench.proxy_core import record
    from gateway.udp_reader import UdpReader

    msgs = [s[1] for s in record(min(calls, 50)) if isinstance(s[1], bytes)][:6]
    msgs.append(msgs[0])  # 7 datagrams per call
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = rx.getsockname()
    got = [0]

    def sink(data: bytes, source: Any, transport: str, conn_id: Any, private: bool) -> None:
        got[0] += 1

    reader = UdpReader(rx, sink, private=False, on_event=lambda name: None)

    def factory() -> Callable[[], None]:
        def run() -> None:
            sendto, readable = tx.sendto, reader._readable
            for _ in range(-(-calls // 8)):  # 8 calls' datagrams queued, then read: a read pass of 56
                for _c in range(8):
                    for m in msgs:
                        sendto(m, dest)  # type: ignore[arg-type]
                readable()
                while reader.last_read:
                    readable()

        return run

    return factory


FACTORIES: dict[str, Callable[[int], Callable[[], Callable[[], None]]]] = {
    "parse": stage_parse,
    "core": stage_core,
    "rules": stage_rules,
    "redis_encode": stage_redis_encode,
    "redis_decode": stage_redis_decode,
    "metrics": stage_metrics,
    "audit": stage_audit,
    "steering": stage_steering,
    "worker": stage_worker,
    "udp": stage_udp,
}


def build_status() -> str:
    """"compiled (N modules)" or "pure (why)": which build these figures are of."""
    from gateway import native

    mods = native.compiled_modules()
    n = sum(mods.values())
    if n:
        return f"compiled ({n}/{len(mods)} listed modules)"
    reasons = native._finder.reasons if native._finder is not None else []
    return "pure (" + (reasons[0] if reasons else "not built") + ")"


def measure(calls: int, repeat: int, only: tuple[str, ...] = STAGES) -> dict[str, float]:
    return {name: _best(FACTORIES[name](calls), calls, repeat) for name in only}


def _under_callgrind(calls: int, only: tuple[str, ...]) -> None:
    """Inside valgrind: warm every stage, then each stage's timed run once, inside the toggle."""
    runs = []
    for name in only:
        factory = FACTORIES[name](calls)
        factory()()  # warm-up: lazy imports, caches, prometheus files; not collected
        runs.append(factory())
    for run in runs:
        sys.call_tracing(run, ())


def instructions(calls: int, only: tuple[str, ...]) -> dict[str, float]:
    """Instructions per call by stage, from one callgrind run of this module (see the docstring)."""
    import re
    import subprocess

    with tempfile.TemporaryDirectory(prefix="cag-stages-cg-") as tmp:
        cmd = [
            "valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=sys_call_tracing",
            "--dump-after=sys_call_tracing", f"--callgrind-out-file={tmp}/cg.%p",
            sys.executable, "-m", "bench.stages", "--under-callgrind", "--calls", str(calls),
            *[a for n in only for a in ("--stage", n)],
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dumps = sorted(Path(tmp).glob("cg.*.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        totals = []
        for d in dumps:
            m = re.search(r"^(?:totals|summary): (\d+)", d.read_text(errors="replace"), re.M)
            totals.append(int(m.group(1)) if m else 0)
    if len(totals) != len(only):
        raise SystemExit(f"stages: expected {len(only)} callgrind dumps, got {len(totals)}")
    return {name: t / calls for name, t in zip(only, totals, strict=True)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench stages", description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5, help="best of this many runs per stage")
    ap.add_argument("--stage", action="append", choices=STAGES, help="only these stages (repeatable)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--instructions", action="store_true",
                    help="instructions per call under callgrind instead of CPU µs (slow; --calls 300 is plenty)")
    ap.add_argument("--under-callgrind", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    only = tuple(args.stage) if args.stage else STAGES
    if args.under_callgrind:
        _under_callgrind(args.calls, only)
        return 0
    status = build_status()
    unit = "instructions" if args.instructions else "µs thread CPU"
    figures = instructions(args.calls, only) if args.instructions else measure(args.calls, args.repeat, only)
    total = sum(v for k, v in figures.items() if k in IN_TOTAL)
    if args.json:
        print(json.dumps({
            "build": status, "python": sys.version.split()[0], "calls": args.calls, "repeat": args.repeat,
            "unit": f"{unit} per admitted call", "stages": {k: round(v, 2) for k, v in figures.items()},
            "total": round(total, 2), "total_of": [k for k in IN_TOTAL if k in figures],
        }, ensure_ascii=False))
        return 0
    how = f"{args.calls} calls under callgrind" if args.instructions else f"best of {args.repeat} runs of {args.calls} calls"
    print(f"per-stage {unit} per admitted call ({status}; {how})")
    u = "" if args.instructions else " µs"
    for k, v in figures.items():
        note = {"parse": "  (inside core)", "worker": "  (includes core)"}.get(k, "")
        print(f"  {k:<13} {v:10.1f}{u}{note}")
    print(f"  {'total':<13} {total:10.1f}{u}  (all but parse; no sockets, loop or redis-py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
