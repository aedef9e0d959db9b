"""One worker process: an event loop joining sockets, the proxy core and policy.

The worker owns nothing the parent cannot give again: its listen sockets
are inherited (SO_REUSEPORT copies held by the parent), its private UDP
socket is its own so responses to what it forwards come back to it
(SPEC §6), and all decisions live in Redis, so a restarted worker picks up
where the dead one left off.

Over the ~400-line mark on purpose, for now: this is the asyncio adapter the
performance work (issue 13) reshapes next (decisions batched per loop turn,
one ``call_at`` from ``ProxyCore.next_deadline()``, counters flushed once a
second); splitting it before that would only be redone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit import AuditSink
from gateway.config import RELOADABLE, Settings, parse_listen
from gateway.logs import RejectLog
from gateway.proxy import (
    Admit,
    CoreConfig,
    NextHop,
    Outcome,
    ProxyCore,
    Refused,
    Release,
    Send,
    steer,
)
from gateway.proxy.pike import PikeConfig
from gateway.tls import TlsContexts, TrunkCertCheck, advertised_tls
from gateway.tls import reload_all as reload_tls
from gateway.tls import wanted as tls_wanted
from gateway.transport import Addr, TcpConnection, TcpConnector, TcpLimits, UdpReader, WaitOverload
from policy.decision import Decision, reject
from policy.model import CallAttempt

log = logging.getLogger("cag.worker")

# gateway.metrics is imported in the worker only (run_worker), never in the
# parent that imports this module: see gateway.metrics for why.
metrics: Any = None

TICK_S = 0.02  # receive-queue sampling for overload (the core's timers are armed from its deadline)
# The core's timer fires this long after its deadline. SIP's timers count in
# half-seconds, so 10 ms late is nothing (the old tick was up to 20 ms late),
# and it batches: after a fire everything due has been handled, so under load
# (a deadline every fraction of a millisecond) the timer fires at most 100
# times a second instead of once per deadline; idle, it fires only when due.
# It also keeps uvloop's 1 ms call_at steps from waking the loop just early.
TIMER_SLACK_S = 0.01
STATS_S = 1.0
RCVBUF = 4 * 1024 * 1024
# The proxy core's time: monotonic and read fresh. Not loop.time(): uvloop's is the
# coarse clock cached per loop turn (~4 ms steps), and the core's wall-clock audit
# times (now + offset) must order correctly against the audit sink's time.time().
# Same base as loop.time() (CLOCK_MONOTONIC), so a deadline can be armed with call_at.
core_time = time.monotonic
RELOAD_FILE = "settings-reload.json"  # written by the parent on SIGHUP, read by every worker
# Garbage collector. The core makes no cyclic garbage (young collections under
# load find none), so the collector only costs pauses, and a pause is as long
# as the young generation it walks: lingering transactions (32 s) all survive
# their first collections. With a young threshold of 50,000 each collection
# walked ~1,500 calls' objects: 12-21 ms every 3 s at 500 calls/s, the p99 of
# the wire latency (gc.callbacks + a loop-lag probe, 2026-11-29). At 2,000 the
# pauses are 1-4 ms; full collections stay rare (2,000 x 5 young ones) and
# the objects alive at startup are frozen out of them.
GC_THRESHOLDS = (2_000, 5, 2_000)


@dataclass
class WorkerSpec:
    index: int
    settings: Settings
    redis_url: str
    rr_secret: bytes
    sockets: list[tuple[str, socket.socket]]  # (transport, listening socket)
    node: str
    # One (read end, write end) datagram socketpair per worker, index = owner (gateway/proxy/steer.py);
    # empty: no steering (one worker, or ``steer = false``).
    steer: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)


# Linux values; Python's socket module does not export the *FORCE options. As
# root (or with CAP_NET_ADMIN) they pass the sysctl caps (rmem_max / wmem_max).
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _set_buf(sock: socket.socket, force: int, plain: int, size: int) -> None:
    for opt in (force, plain):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            return
        except OSError:
            continue


def set_rcvbuf(sock: socket.socket, size: int = RCVBUF) -> None:
    """Large receive buffers: the first loss at high rates is the kernel's (BENCHMARKS.md)."""
    _set_buf(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, size)


def set_sndbuf(sock: socket.socket, size: int = RCVBUF) -> None:
    """A steering socketpair's datagrams count against the *sender's* buffer until read:
    at the default (≈ 208 KiB) ~90 requests queued for a busy worker, then drops."""
    _set_buf(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, size)


def core_reloadable(settings: Settings) -> dict[str, Any]:
    """The proxy core's settings a SIGHUP may change (the rest are fixed at start)."""
    return {
        "hop_timeout": settings.hop_timeout,
        "probe_interval": settings.probe_interval,
        # The operator's unknown-source answer, read where policy reads it (one mapping).
        "unknown_source_code": settings.engine_config().rules.responses.unknown_source_code,
        "max_transactions": settings.max_transactions,
    }


def advertised(settings: Settings) -> Addr:
    """The address written into Record-Route: the first listen address (a wildcard → loopback)."""
    _, host, port = parse_listen(settings.listen[0])
    if host in ("0.0.0.0", "::"):
        host = settings.advertise_host or socket.gethostbyname(socket.gethostname())
    return host, port


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.udp_listen: list[UdpReader] = []
        self.private: UdpReader | None = None
        self.tcp_conns: dict[int, TcpConnection] = {}
        self.tcp_limits = TcpLimits(
            max_total=spec.settings.tcp_max_connections,
            max_per_ip=spec.settings.tcp_max_per_ip,
            message_timeout=spec.settings.tcp_message_timeout,
            idle_timeout=spec.settings.tcp_idle_timeout,
        )
        self.connector = TcpConnector(self._receive, self.tcp_conns, self._event)
        self.pending_events: Counter[str] = Counter()
        self._last_core: Counter[str] = Counter()
        self._last_engine: Counter[str] = Counter()
        self.audit: AuditSink | None = None
        # Plain counters on the message path; copied into Prometheus once a second.
        self._rx: Counter[str] = Counter()
        self._tx: Counter[str] = Counter()
        self._ent: Counter[tuple[str, str]] = Counter()
        self._ent_labelled: set[str] = set()
        self.reject_log = RejectLog(log, spec.settings.log_reject_per_s, spec.settings.log_keep_digits)
        self._last_audit: Counter[str] = Counter()
        self.stopping = asyncio.Event()
        self.engine: Any = None
        self.core: ProxyCore | None = None
        self.servers: list[asyncio.AbstractServer] = []
        # Decisions: every Admit of one loop turn goes to the engine as one batch.
        self._admits: list[Admit] = []
        self._admits_scheduled = False
        self.deciding_n = 0  # decisions handed to the engine and not yet answered
        # Overload and drain: new INVITEs answered 503 overload at once, without a decision.
        self.draining = False
        self.overloaded = False  # datagrams wait in the kernel longer than overload_wait_ms
        # Loop time of the last look at the queues (``_still_overloaded``).
        self._overload_looked_at = -1.0
        self._udp_socks = [sock for transport, sock in spec.sockets if transport == "udp"]
        self._steer_n = len(spec.steer)
        self._steer_tx = [pair[1] for pair in spec.steer]
        self._steer_rx = spec.steer[spec.index][0] if spec.steer else None
        wait = spec.settings.overload_wait_ms / 1000
        self.wait_overload = WaitOverload(enter_s=wait, leave_s=wait / 5, ticks=2)
        # Per-decision metrics as plain numbers, added to prometheus-client once a second.
        self.meter = metrics.Meter()
        # The one timer for the core (STYLE §7): armed for ``_timer_at`` from core.next_deadline().
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def _event(self, name: str) -> None:
        self.pending_events[name] += 1

    async def start(self) -> None:
        s = self.spec.settings
        from policy.engine import AdmissionEngine
        from policy.store import PolicyStore

        store = await PolicyStore.connect(self.spec.redis_url)
        self.engine = AdmissionEngine(store, s.engine_config())
        self.engine.latency_observer = self._observe
        await self.engine.start()
        if s.audit:
            # Started before any INVITE is read: a decision always has a sink to go to.
            self.audit = AuditSink(
                self.spec.redis_url,
                Path(s.state_dir) / "audit-spool" / f"worker-{self.spec.index}",
                max_stream=s.audit_max_stream,
                spool_max_bytes=s.audit_spool_mb * 1024 * 1024,
            )
            await self.audit.start()

        listen = advertised(s)
        # The private socket: on the listen host, an ephemeral port of this worker's own.
        priv_host = listen[0]
        family = socket.AF_INET6 if ":" in priv_host else socket.AF_INET
        psock = socket.socket(family, socket.SOCK_DGRAM)
        set_rcvbuf(psock)
        psock.bind((priv_host, 0))
        psock.setblocking(False)
        private_addr = psock.getsockname()[:2]
        self.private = UdpReader(
            psock, self._receive, private=True, on_event=self._event, after=self._arm
        )
        self.private.start(self.loop)

        hops = tuple(NextHop.parse(h) for h in s.next_hop)
        cfg = CoreConfig(
            listen=listen,
            private=(private_addr[0], private_addr[1]),
            next_hops=hops,
            rr_secret=self.spec.rr_secret,
            pike=PikeConfig(density=s.pike_density, interval=s.pike_interval, block=s.pike_block),
            node=self.spec.node,
            worker=self.spec.index,
            listen_tls=advertised_tls(s, listen[0]),
            **core_reloadable(s),
        )
        # The core runs on core_time(); audit times are wall-clock (offset refreshed with the stats).
        self.core = ProxyCore(cfg, self.engine.source_known, wall_offset=time.time() - core_time())

        self.tls = TlsContexts(s) if tls_wanted(s) else None
        self.tls_connector = (
            TcpConnector(self._receive, self.tcp_conns, self._event, ssl=self.tls.client) if self.tls else None
        )
        for transport, sock in self.spec.sockets:
            if transport == "udp":
                reader = UdpReader(
                    sock, self._receive, private=False, on_event=self._event, after=self._arm
                )
                reader.start(self.loop)
                self.udp_listen.append(reader)
            elif transport == "tls":  # TCP's connections behind the SSL layer (gateway/tls.py)
                if self.tls is None or self.tls.server is None:  # Settings refuse a tls: listen without files
                    raise RuntimeError("tls: listen address without a TLS certificate")
                # The trunk's certificate checked once the handshake is done (gateway/tls.py).
                check = TrunkCertCheck(self._trunk_fingerprints, self._event)

                def tls_connection(check: TrunkCertCheck = check) -> TcpConnection:
                    return TcpConnection(
                        self._receive,
                        self.tcp_conns,
                        self._event,
                        limits=self.tcp_limits,
                        name="tls",
                        peer_check=check,
                    )

                server = await self.loop.create_server(
                    tls_connection,
                    sock=sock,
                    ssl=self.tls.server,
                    ssl_handshake_timeout=s.tcp_message_timeout,
                )
                self.servers.append(server)
            else:
                server = await self.loop.create_server(
                    lambda: TcpConnection(self._receive, self.tcp_conns, self._event, limits=self.tcp_limits),
                    sock=sock,
                )
                self.servers.append(server)
        if self._steer_rx is not None:
            for rx, tx in self.spec.steer:
                rx.setblocking(False)
                tx.setblocking(False)
                set_sndbuf(tx)
            set_rcvbuf(self._steer_rx)
            self.loop.add_reader(self._steer_rx.fileno(), self._steer_in)
            self._udp_socks.append(self._steer_rx)  # its backlog counts towards overload too
        self.loop.call_later(TICK_S, self._sample_queue)  # always: a reload may turn overload_wait_ms on
        self._arm()
        self.loop.call_later(STATS_S, self._flush_stats)
        self.meter.start(self.loop)
        metrics.WORKERS.set(1)
        # Series a dashboard plots from the start (0 until something happens).
        for reason in ("malformed", "unknown_source", "pike", "overload"):
            metrics.DROPPED.labels(reason)
        for direction in ("in", "out"):
            for transport in ("udp", "tcp"):
                metrics.MESSAGES.labels(direction, transport)
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self._start_memtrace()

    def _start_memtrace(self) -> None:
        """``CAG_MEMTRACE=PREFIX``: a JSON line of this worker's memory every 30 s (gateway/memtrace.py)."""
        from gateway import memtrace

        got = memtrace.from_env(self.spec.index, self)
        if got is None:
            return
        tracer, period = got

        def sample() -> None:
            try:
                tracer.sample()
            except Exception:  # a diagnostic must never stop the worker
                log.exception("memtrace sample failed")
            self.loop.call_later(period, sample)

        sample()

    def _trunk_fingerprints(self, ip: str) -> tuple[str, ...]:
        """The certificates the trunk owning ``ip`` may show over TLS, from the current
        reference snapshot (empty: no such trunk, or one identified by address alone)."""
        trunk = self.engine.ref.trunk_for(ip) if self.engine is not None else None
        return trunk.tls_fingerprints if trunk is not None else ()

    # ---- bytes in -------------------------------------------------------
    def _receive(self, data: bytes, source: Addr, transport: str, conn_id: int | None, private: bool) -> None:
        core = self.core
        if core is None:
            return
        self._rx[transport] += 1
        if self._steer_n and transport == "udp" and not private:
            j = steer.owner(data, self._steer_n)
            if j is not None and j != self.spec.index:
                self._steer_out(core, j, source, data)
                return
        try:
            actions = core.receive(data, source, transport, conn_id, core_time(), private)
        except Exception:  # the core promises not to raise; never let a bug kill the worker
            log.exception("proxy core raised on a message; dropped")
            self._event("core_error")
            return
        if actions:
            self._dispatch(actions)
        if transport != "udp":  # UDP: once per read pass (UdpReader's ``after``), not per datagram
            self._arm()

    def _steer_out(self, core: ProxyCore, owner: int, source: Addr, data: bytes) -> None:
        """Hand a trunk's request to the worker owning its Call-ID (gateway/proxy/steer.py).

        Screened here first (pike, unknown sources): this worker sees every
        datagram of the source, so per-source limits keep their meaning, and
        a flood is dropped where it lands instead of crossing over.
        """
        if core.screen(data, source[0], core_time()):
            return
        try:
            self._steer_tx[owner].send(steer.wrap(source, data))
        except OSError:  # the owner's queue is full (it is stalled or gone): the trunk retransmits
            self.pending_events["steer_dropped"] += 1
            return
        self.pending_events["steered_out"] += 1

    def _steer_in(self) -> None:
        """Requests other workers handed to this one: the core takes them as from the trunk, screened."""
        sock = self._steer_rx
        core = self.core
        if sock is None or core is None:
            return
        for _ in range(512):  # then let the loop serve the listen sockets and timers too
            try:
                frame = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            got = steer.unwrap(frame)
            if got is None:
                self.pending_events["steer_bad_frame"] += 1
                continue
            source, data = got
            self.pending_events["steered_in"] += 1
            try:
                actions = core.receive(data, source, "udp", None, core_time(), True)
            except Exception:
                log.exception("proxy core raised on a steered message; dropped")
                self._event("core_error")
                continue
            if actions:
                self._dispatch(actions)
        self._arm()

    # ---- actions out ----------------------------------------------------
    def _dispatch(self, actions: list[Any]) -> None:
        send = self._send
        for action in actions:
            if type(action) is Send:  # nearly every action: one type check, no isinstance chain
                send(action)
            elif isinstance(action, Admit):
                self.meter.count(metrics.INVITES)
                if (
                    self.draining
                    or (self.overloaded and self._still_overloaded())
                    or self.deciding_n >= self.spec.settings.max_pending
                ):
                    self._shed(action)
                    continue
                self.deciding_n += 1
                self._admits.append(action)
                if not self._admits_scheduled:  # one batch per loop turn
                    self._admits_scheduled = True
                    self.loop.call_soon(self._flush_admits)
            elif isinstance(action, Release):
                self.engine.release(action.trunk_id, action.call_id)
            elif isinstance(action, Outcome):
                if self.audit is not None:
                    self.audit.outcome(action)
            elif isinstance(action, Refused):  # the core answered it already
                self._finish(action.record_id, action.call, action.decision, 0.0, None)

    def _send(self, a: Send) -> None:
        self._tx[a.transport] += 1
        if a.transport == "udp":
            ep = self.private if a.private or not self.udp_listen else self.udp_listen[0]
            if ep is not None:
                ep.sendto(a.data, a.dest)
        elif a.conn_id is not None:  # TCP or TLS: the connection the request came on
            conn = self.tcp_conns.get(a.conn_id)
            if conn is not None:
                conn.write(a.data)
            else:
                self._event("tcp_conn_gone")
        elif a.transport == "tls":
            if self.tls_connector is not None:
                self.tls_connector.send(a.data, a.dest)
            else:  # a TLS target with TLS not configured (the core refuses most of these)
                self._event("tls_unavailable")
        else:
            self.connector.send(a.data, a.dest)

    def _flush_admits(self) -> None:
        """Every INVITE read this loop turn goes to the engine as one batch (one pipeline write,
        one budget timer); answers come back through ``_decided``, no task per decision."""
        batch, self._admits = self._admits, []
        self._admits_scheduled = False
        t0 = time.perf_counter()
        try:
            self.engine.admit_many([((a, t0), a.call) for a in batch], self._decided)
        except Exception:  # the engine promises not to raise; never strand a caller
            log.exception("admission batch failed")
            for a in batch:
                self._decided((a, t0), reject("store_unavailable", retry_after=1))

    def _decided(self, token: tuple[Admit, float], decision: Decision) -> None:
        a, t0 = token
        self.deciding_n -= 1
        latency = time.perf_counter() - t0
        self.meter.observe(metrics.DECISION_SECONDS, latency)
        self._finish(a.record_id, a.call, decision, latency, a.key)

    def _finish(
        self, record_id: str, call: CallAttempt, decision: Decision, latency: float, key: str | None
    ) -> None:
        """How every initial INVITE ends: policy's decisions, shedding, the core's own refusals.

        Counted, answered (``key``: through the core; None: the core already
        answered), logged when rejected and audited (SPEC §7: every attempt).
        """
        self.meter.count(metrics.DECISIONS, decision.decision, decision.reason)
        ent = decision.enterprise_id
        if ent:
            if ent not in self._ent_labelled:
                # Bounded label set: the first N enterprise ids this worker sees, then "other".
                if len(self._ent_labelled) < self.spec.settings.metrics_max_enterprises:
                    self._ent_labelled.add(ent)
                else:
                    ent = "other"
            self._ent[(ent, decision.decision)] += 1
        if key is not None and self.core is not None:
            self._dispatch(self.core.decided(key, decision, core_time()))
            self._arm()
        if not decision.admit and decision.sip_code:  # after the answer left; written by the log thread
            self.reject_log.reject(decision, record_id, time.time())
        if self.audit is not None:  # after the answer left: a list append, flushed off this path
            self.audit.decision(record_id, call, decision, latency, self.spec.node, self.spec.index)

    def _still_overloaded(self) -> bool:
        """Look again before refusing a call: the flag is set per tick (20 ms).

        A burst (junk, or a worker descheduled for a moment) can set it and
        be worked off within the same tick; the INVITEs that were queued
        behind it are read once it is gone and must not be refused for it.
        Nothing waiting on any socket now (SIOCINQ) ends the overload at once.
        Looked at once per loop turn (uvloop's ``time()`` is the turn's
        cached clock): a turn that reads 60 INVITEs while overloaded makes
        one round of ioctls, not 60.
        """
        turn = self.loop.time()
        if turn == self._overload_looked_at:
            return True
        self._overload_looked_at = turn
        if self.wait_overload.drained(self._udp_socks):
            self.overloaded = False
            log.warning("receive queues empty: accepting new INVITEs again")
            return False
        return True

    def _shed(self, a: Admit) -> None:
        """503 overload + Retry-After at once: no Redis call, no forwarding (shedding early).

        An answered INVITE costs a parse and a response; an admitted call costs
        ~10x more (decision, forwarding, six more messages), so shedding lets
        a saturated worker catch up instead of letting every call wait. The
        attempt is still audited (R8) and counted (``shed_<why>``).
        """
        why = "draining" if self.draining else ("queue" if self.overloaded else "pending")
        self.pending_events["shed_" + why] += 1
        self._finish(a.record_id, a.call, reject("overload", retry_after=1), 0.0, a.key)

    def _observe(self, what: str, seconds: float) -> None:
        if what == "redis":
            self.meter.observe(metrics.REDIS_SECONDS, seconds)

    # ---- timers ---------------------------------------------------------
    def _arm(self) -> None:
        """After every event the core saw: arm the one timer if its next deadline moved earlier.

        A deadline that moved later keeps the armed timer, which then wakes
        the core early once (``_on_timer`` finds nothing due and re-arms);
        cheaper than cancelling and re-arming on every message. Nothing due
        (``inf``): no timer, an idle worker sleeps.
        """
        core = self.core
        if core is None:
            return
        due = core.next_deadline()
        if due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = self.loop.call_at(due + TIMER_SLACK_S, self._on_timer)

    def _on_timer(self) -> None:
        """The core's deadline came: its due timers, then the timer for the next one."""
        self._timer = None
        self._timer_at = float("inf")
        if self.core is not None:
            try:
                actions = self.core.tick(core_time())
            except Exception:
                log.exception("proxy core tick raised")
                actions = []
            if actions:
                self._dispatch(actions)
        self._arm()

    def _sample_queue(self) -> None:
        """Every TICK_S: how long datagrams waited in the kernel, to enter or leave overload."""
        if self.spec.settings.overload_wait_ms > 0 and self.udp_listen:
            # How long the oldest datagram of each read pass waited in the kernel (its
            # SO_TIMESTAMPNS): requests really waiting, which queue bytes cannot tell
            # (Linux frees read datagrams' memory in batches, so SO_MEMINFO overstates).
            wait = max(r.take_max_wait() for r in (*self.udp_listen, *([self.private] if self.private else [])))
            if self.wait_overload.update(wait):
                self.overloaded = self.wait_overload.overloaded
                self._overload_looked_at = -1.0  # a new state: the next INVITE looks again
                if self.overloaded:
                    self._event("overload_entered")
                    log.warning("datagrams wait %.0f ms in the kernel: shedding new INVITEs (503 overload)",
                                wait * 1000)
                else:
                    log.warning("queue wait back to normal: accepting new INVITEs again")
        self.loop.call_later(TICK_S, self._sample_queue)

    def _flush_stats(self) -> None:
        """Copy plain counters into Prometheus once a second, off the per-message path."""
        core, engine = self.core, self.engine
        if core is not None:
            core.wall_offset = time.time() - core_time()  # the wall clock may be stepped
            _flush_counter(core.stats, self._last_core)
            metrics.IN_FLIGHT.set(core.in_flight())
            for i, (hop, up) in enumerate(core.hop_status()):
                name = f"{hop.transport}:{hop.host}:{hop.port}"
                metrics.HOP_UP.labels(name).set(1 if up else 0)
                if i in core.hop_rtt:
                    metrics.HOP_RTT.labels(name).set(core.hop_rtt[i])
        if engine is not None:
            _flush_counter(engine.stats, self._last_engine)
            metrics.REFDATA_LOADED.set(1 if engine.ready else 0)
            metrics.REDIS_OK.set(1 if engine.redis_ok else 0)
            metrics.REFDATA_VERSION.set(getattr(engine.ref, "version", 0))
            if engine.ref_confirmed_at:
                metrics.REFDATA_AGE.set(max(time.time() - engine.ref_confirmed_at, 0.0))
        if self.audit is not None:
            _flush_counter(self.audit.stats, self._last_audit)
            metrics.AUDIT_BUFFER.set(len(self.audit._buf))
            metrics.AUDIT_SPOOL.set(self.audit.spool_bytes)
            metrics.AUDIT_STREAM.set(self.audit._stream_len)
        for direction, counts in (("in", self._rx), ("out", self._tx)):
            for transport, n in counts.items():
                metrics.MESSAGES.labels(direction, transport).inc(n)
            counts.clear()
        for (ent, decided), n in self._ent.items():
            metrics.ENTERPRISE_DECISIONS.labels(ent, decided).inc(n)
        self._ent.clear()
        for name, n in self.pending_events.items():
            metrics.EVENTS.labels(name).inc(n)
            if name.startswith("shed_"):
                metrics.DROPPED.labels("overload").inc(n)
        self.pending_events.clear()
        self.loop.call_later(STATS_S, self._flush_stats)

    def reload(self) -> None:
        """SIGHUP: take the reloadable settings the parent wrote (``RELOAD_FILE``).

        Engine knobs apply from the next decision, next hops from the next
        call (dialogs keep their hop), the log level at once. Transactions in
        flight are not touched, so no call is dropped.
        """
        path = Path(self.spec.settings.state_dir) / RELOAD_FILE
        try:
            data = json.loads(path.read_text())
            changes = {k: v for k, v in data.items() if k in RELOADABLE}
            new = Settings.model_validate({**self.spec.settings.model_dump(), **changes})
        except (OSError, ValueError) as e:
            log.error("reload: cannot read %s: %s", path, e)
            return
        self.apply(new)

    def apply(self, new: Settings) -> None:
        """Put reloadable settings into effect (see ``gateway.config.RELOADABLE``)."""

        old = self.spec.settings
        self.spec.settings = new
        logging.getLogger().setLevel(new.log_level.upper())
        reload_tls()  # the certificate files, re-read into the live contexts (gateway/tls.py)
        if self.engine is not None:
            self.engine.reconfigure(new.engine_config())
        wait = new.overload_wait_ms / 1000
        self.wait_overload.enter_s, self.wait_overload.leave_s = wait, wait / 5
        if self.core is not None:
            self.core.cfg = dataclasses.replace(self.core.cfg, **core_reloadable(new))
            if new.next_hop != old.next_hop:
                self.core.set_next_hops(tuple(NextHop.parse(h) for h in new.next_hop))
            self._arm()  # probing may have been turned on or its interval shortened
        self._event("reloads")
        log.info("worker %d reloaded settings", self.spec.index)

    async def drain(self) -> None:
        """SIGTERM: stop taking connections, let in-flight transactions finish (bounded).

        New INVITEs arriving meanwhile get 503 overload + Retry-After (the trunk
        retries another node); in-dialog requests and responses keep flowing
        until the deadline, so calls being set up complete.
        """
        self.draining = True
        for server in self.servers:
            server.close()
        deadline = self.loop.time() + self.spec.settings.drain_timeout
        while self.core is not None and self.core.undecided() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.audit is not None:  # every decided call's record persisted (stream or spool)
            await self.audit.close(timeout=3.0)
        if self.engine is not None:
            await self.engine.stop()
        self.meter.stop()  # what was counted since the last flush reaches /metrics


def _flush_counter(current: Counter[str], last: Counter[str]) -> None:
    for name, value in list(current.items()):
        delta = value - last.get(name, 0)
        if delta > 0:
            metrics.EVENTS.labels(name).inc(delta)
            if name.startswith("dropped_"):
                metrics.DROPPED.labels(name[8:]).inc(delta)
            elif name == "malformed_answered":
                metrics.DROPPED.labels("malformed").inc(delta)
            last[name] = value


async def _main(spec: WorkerSpec) -> None:
    worker = Worker(spec)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await worker.start()
    loop.add_signal_handler(signal.SIGHUP, worker.reload)
    log.info("worker %d (pid %d) serving", spec.index, os.getpid())
    await stop.wait()
    await worker.drain()


def run_worker(spec: WorkerSpec) -> int:
    """Entry point in the forked child."""
    import uvloop

    global metrics
    from gateway import metrics as worker_metrics

    metrics = worker_metrics
    from gateway import logs

    logs.setup(spec.settings.log_level, threaded=True)  # the parent's listener thread did not fork with us
    try:
        uvloop.run(_main(spec))
    except Exception:
        log.exception("worker %d failed", spec.index)
        return 1
    return 0
