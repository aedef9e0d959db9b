"""Micro-benchmark: CPU per admitted call through the sans-IO proxy core (no I/O, no policy).

One call = INVITE in + admit decision (100 up, INVITE down), 180 and 200 back,
ACK and BYE along the Record-Route, 200 for the BYE: what the gateway does per
call on the wire, minus sockets and Redis. Run: python -m bench.proxy_core
"""

import time
from tests.unit.test_proxy_support import make_core, invite, request, respond, sends, TRUNK, HOP1
from policy.decision import admitted
from gateway.proxy import Admit
from gateway.sip import parse
ADMIT = admitted(trunk_id="t-a")
core = make_core()
N=3000
msgs=[]
# pre-build messages
t_total=0.0
parse_t=0.0
now=1000.0
for i in range(N):
    inv = invite(call_id=f"c{i}@x", branch=f"z9hG4bK-{i}-1")
    t0=time.perf_counter()
    acts = core.receive(inv, TRUNK, "udp", None, now)
    adm = [a for a in acts if isinstance(a, Admit)][0]
    out = core.decided(adm.key, ADMIT, now)
    t_total += time.perf_counter()-t0
    fwd = sends(out)[1].data
    r180=respond(fwd, 180, "Ringing"); r200=respond(fwd, 200, "OK")
    t0=time.perf_counter()
    core.receive(r180, HOP1, "udp", None, now, True)
    core.receive(r200, HOP1, "udp", None, now, True)
    t_total += time.perf_counter()-t0
    rr = [l for l in fwd.split(b"\r\n") if l.startswith(b"Record-Route")][0].split(b": ",1)[1].decode()
    ack = request("ACK", call_id=f"c{i}@x", branch=f"z9hG4bK-{i}-5", to_tag="uas-tag-1", routes=(rr,), uri="sip:uas@10.0.0.99:5070")
    bye = request("BYE", call_id=f"c{i}@x", branch=f"z9hG4bK-{i}-7", cseq=2, to_tag="uas-tag-1", routes=(rr,), uri="sip:uas@10.0.0.99:5070")
    t0=time.perf_counter()
    core.receive(ack, TRUNK, "udp", None, now)
    s = sends(core.receive(bye, TRUNK, "udp", None, now))[0]
    t_total += time.perf_counter()-t0
    b200 = respond(s.data, 200)
    t0=time.perf_counter()
    core.receive(b200, HOP1, "udp", None, now, True)
    t_total += time.perf_counter()-t0
    now += 0.001
t0=time.perf_counter()
for i in range(N): parse(inv)
parse_t=(time.perf_counter()-t0)/N
print(f"core per call: {t_total/N*1e6:.1f} us; parse INVITE {parse_t*1e6:.1f} us")
