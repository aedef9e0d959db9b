"""INVITE server transactions: the upstream side of an initial INVITE (RFC 3261 §17.2.1).

One policy decision per transaction: the INVITE is checked (Max-Forwards,
loops, the transaction cap), turned into a ``CallAttempt`` and handed out as
``Admit``; ``decided`` then rejects, drops or forwards it (``client.py``).
Retransmissions are answered from memory, CANCEL and the ACK of a non-2xx
final end here. The core's own refusals (400, 482, 483, 503) are decisions
too: built by the same ``shared.refusal`` and handed out as ``Refused``, so
the adapter finishes them like policy's (metrics, log, audit, SPEC §7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from gateway.sip import Request, SipError, Via, build_response
from policy.decision import Decision, reject

from .actions import Action, Admit, Outcome, Refused, Release
from .attempt import call_attempt
from .linger import Graveyard, Tomb
from .shared import MAGIC, Arrival, Shared, reason_header, refusal, reply_addr
from .transaction import ClientTxn, CState, ServerTxn, SState

if TYPE_CHECKING:
    from .client import Clients

# Transactions that accept the ACK of a final they answered (or absorb it after a silent drop).
ACKABLE = (SState.COMPLETED, SState.CONFIRMED, SState.DROPPED)


def txn_key(call_id: str, top: Via) -> str:
    """RFC 3261 §17.2.3: Call-ID + top Via branch + sent-by (the branch alone is the trunk's)."""
    return f"{call_id}|{top.branch or ''}|{top.host}:{top.port or 5060}"


@final
class Servers:
    """See the module docstring. ``clients`` is set by the core (the two sides call each other).

    ``graves``: the tombs of answered and silently dropped calls (``linger.py``).
    """

    __slots__ = ("clients", "graves", "shared")

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.clients: Clients
        self.graves = Graveyard()

    # ---- an initial INVITE

    def invite(self, req: Request, arr: Arrival, now: float) -> list[Action]:
        sh = self.shared
        top = arr.top
        servers = sh.servers
        key = txn_key(req.call_id, top)
        txn = servers.get(key)
        if txn is not None:
            return self._retransmission(txn, now)
        if key in self.graves.by_key:  # answered or dropped: never a second decision
            sh.stats["retransmission_absorbed"] += 1
            return []
        mf = req.get("Max-Forwards")
        mf_n = -1
        if mf is not None:
            try:
                mf_n = int(mf)
            except ValueError:  # the parser checks Max-Forwards; this is belt and braces
                return self._refuse(req, arr, now, "malformed")
            if mf_n <= 0:
                return self._refuse(req, arr, now, "too_many_hops")
        ours = sh.ours
        looped = any(h[1] == "via" and MAGIC in h[2] for h in req.headers)  # else no Via of ours
        for v in req.vias() if looped else ():
            b = v.branch
            if b is not None and b.startswith(MAGIC) and (v.host, v.port or 5060) in ours:
                return self._refuse(req, arr, now, "loop_detected")
        if len(servers) + len(self.graves) >= sh.cfg.max_transactions:
            sh.stats["overload"] += 1
            return self._refuse(req, arr, now, "overload", retry_after=1)
        from_tag = req.from_tag or ""  # read now: a broken From fails here, not after the decision
        sh.stats["invites"] += 1
        call = call_attempt(req, top, arr.source, now + sh.wall_offset)
        record_id = self._record_id()
        txn = ServerTxn(
            key, req, call, record_id, reply_addr(top, arr.source), arr.source, arr.transport, arr.conn_id, sh.tag(), now
        )
        txn.from_tag = from_tag
        txn.mf = mf_n
        servers[key] = txn
        sh.timers.arm(txn)
        return [Admit(key, call, record_id)]

    def _record_id(self) -> str:
        """``{node}-{worker}-{counter:x}-{run:08x}``: the audit record id (X-Admission-Id).

        Unique without coordination: ``node-worker`` names the worker process
        of a gateway node, the counter (``Shared.next_id``) only grows during
        its life, and ``run`` — 32 random bits drawn once, from the core's
        rng at its first record (in a worker, ``random.Random()`` seeded from
        the OS after the fork) — tells its lives apart, whose counters all
        start at 1. Two lives of one worker collide only if their runs are
        equal: 2⁻³² per pair of lives. (A fresh random part per record, as
        before 2026-12-07, made each record of a new life collide with the
        earlier life's record of the same counter with that chance: ≈ N·2⁻³²
        after N records, weaker.) Readers de-duplicate on (decision time, id),
        so a collision would also need the same µs. The id names a record, it
        is no secret. One value a process is what makes it cheap to keep: a
        packed records file stores ``run`` by dictionary, a few bits a record
        (gateway/audit/columnar.py) instead of 4 B. The shape is unchanged.
        """
        sh = self.shared
        run = sh.record_run
        if not run:
            run = sh.record_run = f"{sh.rng.getrandbits(32):08x}"
        return f"{sh.cfg.node}-{sh.cfg.worker}-{sh.next_id():x}-{run}"

    def _refuse(
        self,
        req: Request,
        arr: Arrival,
        now: float,
        reason: str,
        retry_after: int | None = None,
    ) -> list[Action]:
        """The core's own refusal of an INVITE, answered at once without a transaction.

        No transaction: a 503 for the transaction cap must not make one, and the
        trunk's retransmissions get the same answer again. Audited like any
        decision (``Refused``) when a CallAttempt can be read from the INVITE.
        """
        sh = self.shared
        decision = reject(reason, retry_after=retry_after)
        out: list[Action] = [sh.reply(req, arr, decision.sip_code, data=refusal(req, decision, sh.tag()))]
        try:
            call = call_attempt(req, arr.top, arr.source, now + sh.wall_offset)
        except SipError:
            return out
        out.append(Refused(call, self._record_id(), decision))
        return out

    def _retransmission(self, txn: ServerTxn, now: float) -> list[Action]:
        """Never a second decision: replay the last response sent, or nothing while pending."""
        sh = self.shared
        if txn.state in (SState.PENDING, SState.ACCEPTED, SState.DROPPED) or txn.last is None:
            sh.stats["retransmission_absorbed"] += 1
            return []
        sh.stats["retransmission_answered"] += 1
        if txn.state == SState.COMPLETED and txn.g_at != float("inf"):
            # The client is alive and retransmitting, and has just had the final:
            # back Timer G off rather than send it twice per retransmission.
            txn.back_off(now)
            sh.timers.arm(txn)
        return [sh.upstream(txn, txn.last)]

    # ---- the decision

    def decided(self, key: str, decision: Decision, now: float) -> list[Action]:
        """The answer to an ``Admit``: reject (``refusal``), drop silently, or forward."""
        sh = self.shared
        txn = sh.servers.get(key)
        if txn is None or txn.state != SState.PENDING:
            # Expired or cancelled meanwhile: an admission took a concurrency slot.
            if decision.admit and decision.trunk_id:
                call_id = txn.call_id if txn is not None else key.split("|", 1)[0]
                return [Release(decision.trunk_id, call_id)]
            return []
        out: list[Action] = []
        if not decision.admit:
            code = decision.sip_code
            if code == 0:
                sh.stats["dropped_policy"] += 1
                txn.drop(now)
                self.bury(txn, None)
                return out
            data = refusal(txn.request(), decision, txn.to_tag)
            sh.stats[f"tx_{code}"] += 1
            self.complete(txn, data, now, out)
            return out
        trying = build_response(txn.request(), 100)
        txn.forward(decision.trunk_id or "", trying)
        sh.stats["tx_100"] += 1
        out.append(sh.upstream(txn, trying))
        if not self.clients.forward(txn, now, out):
            self.fail(txn, 500, "no next hop", now, out)
        return out

    # ---- finals

    def complete(self, txn: ServerTxn, final: bytes, now: float, out: list[Action]) -> None:
        """A non-2xx final goes upstream and stays for retransmissions until the ACK."""
        txn.complete(final, now)
        self.shared.timers.arm(txn)
        out.append(self.shared.upstream(txn, final))

    def fail(self, txn: ServerTxn, code: int, text: str, now: float, out: list[Action]) -> None:
        """Our own final for an admitted call (no hop / timeout / cancelled): release and record it."""
        data = build_response(txn.request(), code, to_tag=txn.to_tag, extra=[reason_header(code, text)])
        self.shared.stats[f"tx_{code}"] += 1
        self.complete(txn, data, now, out)
        self.ended(txn, code, now, out)

    def ended(self, txn: ServerTxn, code: int, now: float, out: list[Action]) -> None:
        """An admitted call ended before it was answered: free its slot, file its outcome."""
        if txn.trunk_id:
            out.append(Release(txn.trunk_id, txn.call_id))
        out.append(Outcome(txn.record_id, txn.call_id, code, None, now + self.shared.wall_offset))

    # ---- ACK and CANCEL

    def ack(self, txn: ServerTxn, now: float) -> list[Action]:
        """The ACK of a final we answered (or of a call we dropped): absorbed, Timer G stops."""
        self.shared.stats["ack_absorbed"] += 1
        if txn.state == SState.COMPLETED:
            txn.on_ack(now)
            self.shared.timers.arm(txn)
        return []

    def cancel(self, req: Request, arr: Arrival, now: float) -> list[Action]:
        sh = self.shared
        sh.stats["cancels"] += 1
        key = txn_key(req.call_id, arr.top)
        txn = sh.servers.get(key)
        if txn is None:
            # A tomb's call was answered (or dropped): nothing left to cancel, as for ACCEPTED.
            return [sh.reply(req, arr, 200 if key in self.graves.by_key else 481)]
        out: list[Action] = [sh.reply(req, arr, 200, to_tag=txn.to_tag)]
        if txn.state == SState.PENDING:
            txn.cancelled = True
            data = build_response(txn.request(), 487, to_tag=txn.to_tag)
            sh.stats["tx_487"] += 1
            self.complete(txn, data, now, out)
        elif txn.state == SState.FORWARDED and not txn.cancel_requested:
            txn.cancel_requested = True
            ct = txn.client
            if ct is not None and ct.state in (CState.CALLING, CState.PROCEEDING):
                if ct.got_response:
                    self.clients.send_cancel(ct, now, out)
                else:
                    ct.cancel_pending = True  # RFC 3261 §9.1: only after a provisional
        return out

    # ---- timers

    def fire(self, txn: ServerTxn, now: float, out: list[Action]) -> None:
        """Timer H / I / the pending bound (end of life) or Timer G (the final again)."""
        sh = self.shared
        if now >= txn.end_at:
            if txn.state == SState.PENDING:
                sh.stats["pending_expired"] += 1
            self.remove(txn)
            return
        if now >= txn.g_at and txn.state == SState.COMPLETED and txn.last is not None:
            sh.stats["retransmitted_final"] += 1
            out.append(sh.upstream(txn, txn.last))
            txn.back_off(now)
        sh.timers.arm(txn)

    def bury(self, txn: ServerTxn, ct: ClientTxn | None) -> None:
        """A call with nothing more to send (2xx relayed by ``ct``, or dropped): a ``Tomb`` replaces both sides.

        Called for a server transaction in ACCEPTED (with the client
        transaction whose 2xx it relayed) or DROPPED; see ``linger.py``.
        """
        sh = self.shared
        dest = txn.source if txn.transport == "tcp" else txn.reply_addr
        end_at = txn.end_at if ct is None else ct.end_at
        self.graves.bury(Tomb(txn.key, "" if ct is None else ct.branch, dest, txn.transport, txn.conn_id, end_at))
        self.remove(txn)
        if ct is not None:
            ct.dead = True
            clients = sh.clients
            if clients.get(ct.branch) is ct:
                del clients[ct.branch]
        sh.timers.forget(2 if ct is not None else 1)

    def remove(self, txn: ServerTxn) -> None:
        txn.dead = True
        servers = self.shared.servers
        if servers.get(txn.key) is txn:
            del servers[txn.key]
        txn.client = None
