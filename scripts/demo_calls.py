"""Place a handful of demo calls through a running gateway and print what happened.

A tiny UDP user agent, so the README's run command shows admitted and
rejected calls at once without asking the reader to learn SIPp first. Each
call: INVITE → (100/180) → final; a 200 is ACKed and hung up with a BYE along
the Record-Route; a rejection is ACKed and its Reason header printed.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
import uuid

DEMO_CALLS = [
    # (what it shows, caller, callee, token, purpose)
    ("consented callback from a filed 95 number", "95500", "+8613800138000", "demo-consent-0", None),
    ("consented call from a filed 400 number", "4001234567", "+8613800138001", "demo-consent-1", None),
    ("no consent token", "95500", "+8613800138002", None, None),
    ("marketing purpose", "95500", "+8613800138003", "demo-consent-3", "marketing"),
    ("token granted for another callee", "95500", "+8613800138004", "demo-consent-5", None),
    ("callee on the do-not-call list", "95500", "+8613900139000", "demo-consent-dnc", None),
    ("caller number not filed", "95577", "+8613800138006", "demo-consent-6", None),
    ("inbound-only access number", "95501", "+8613800138007", "demo-consent-7", None),
    ("subscriber (mobile) number as caller", "13912345678", "+8613800138008", "demo-consent-8", None),
]


def _msg(method: str, ruri: str, headers: list[str]) -> bytes:
    return ("\r\n".join([f"{method} {ruri} SIP/2.0", *headers, "Content-Length: 0", "", ""])).encode()


def call(sock: socket.socket, gw: tuple[str, int], caller: str, callee: str, token: str | None,
         purpose: str | None) -> str:
    local = sock.getsockname()
    call_id = f"{uuid.uuid4().hex}@demo"
    branch = f"z9hG4bK{uuid.uuid4().hex[:16]}"
    ruri = f"sip:{callee}@{gw[0]}:{gw[1]};user=phone"
    from_h = f"From: <sip:{caller}@{local[0]}:{local[1]};user=phone>;tag={uuid.uuid4().hex[:8]}"
    to_h = f"To: <sip:{callee}@{gw[0]}:{gw[1]};user=phone>"
    headers = [
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch};rport", from_h, to_h,
        f"Call-ID: {call_id}", "CSeq: 1 INVITE", f"Contact: <sip:demo@{local[0]}:{local[1]}>",
        "Max-Forwards: 70",
    ]
    if token:
        headers.append(f"X-Consent-Token: {token}")
    if purpose:
        headers.append(f"X-Call-Purpose: {purpose}")
    sock.sendto(_msg("INVITE", ruri, headers), gw)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sock.settimeout(deadline - time.monotonic())
        try:
            data = sock.recv(65535).decode("latin-1")
        except TimeoutError:
            break
        m = re.match(r"SIP/2.0 (\d{3}) ([^\r\n]*)", data)
        if not m or call_id not in data:
            continue
        code = int(m.group(1))
        if code < 200:
            continue
        to_line = re.search(r"^To: ([^\r\n]*)", data, re.M)
        to_value = to_line.group(1) if to_line else to_h[4:]
        if code >= 300:
            sock.sendto(_msg("ACK", ruri, [headers[0], from_h, f"To: {to_value}", f"Call-ID: {call_id}",
                                          "CSeq: 1 ACK", "Max-Forwards: 70"]), gw)
            reason = re.search(r'^Reason: [^\r\n]*text="([^"]+)"', data, re.M)
            retry = re.search(r"^Retry-After: (\d+)", data, re.M)
            extra = f" Retry-After {retry.group(1)}s" if retry else ""
            return f"{code} {m.group(2)} ({reason.group(1) if reason else '-'}){extra}"
        routes = re.findall(r"^Record-Route: ([^\r\n]*)", data, re.M)
        contact = re.search(r"^Contact: <?([^>\r\n;]*)", data, re.M)
        target = contact.group(1) if contact else ruri
        route_h = [f"Route: {r}" for r in routes]
        admission = re.search(r"^X-Admission-Id: ([^\r\n]*)", data, re.M)
        dialog = [from_h, f"To: {to_value}", f"Call-ID: {call_id}", "Max-Forwards: 70", *route_h]
        sock.sendto(_msg("ACK", target, [f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch}a;rport",
                                         *dialog, "CSeq: 1 ACK"]), gw)
        sock.sendto(_msg("BYE", target, [f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch}b;rport",
                                         *dialog, "CSeq: 2 BYE"]), gw)
        time.sleep(0.1)
        return f"{code} {m.group(2)} (admitted, hung up){' id ' + admission.group(1) if admission else ''}"
    return "no answer"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gateway", default="127.0.0.1:5060")
    args = ap.parse_args()
    host, port = args.gateway.rsplit(":", 1)
    gw = (host, int(port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        print(f"demo calls through {args.gateway}:")
        for what, caller, callee, token, purpose in DEMO_CALLS:
            result = call(sock, gw, caller, callee, token, purpose)
            print(f"  {caller:>11} -> {callee:<15} {what:<42} {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
