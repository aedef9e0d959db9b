"""Real-world-shaped SIP messages shared by the test_sip_* modules."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

SDP = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 10.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 10.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)


def crlf(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


SIPP_INVITE = crlf(
    "INVITE sip:13800138000@10.0.0.2:5060 SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-0",
    "From: sipp <sip:1058001234@10.0.0.1:5060>;tag=4242SIPpTag001",
    "To: <sip:13800138000@10.0.0.2:5060>",
    "Call-ID: 1-4242@10.0.0.1",
    "CSeq: 1 INVITE",
    "Contact: sip:sipp@10.0.0.1:5060",
    "Max-Forwards: 70",
    "P-Asserted-Identity: <sip:1058001234@10.0.0.1;user=phone>",
    "X-Consent-Token: ct-0001",
    "Subject: Performance Test",
    "Content-Type: application/sdp",
    f"Content-Length: {len(SDP)}",
    body=SDP,
)

COMPACT_INVITE = crlf(
    "INVITE tel:+8613800138000;phone-context=+86 SIP/2.0",
    "v: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKc1",
    "f: <sip:1058001234@10.0.0.1>;tag=f1",
    "t: <tel:+8613800138000>",
    "i: compact-1@10.0.0.1",
    "CSeq: 7 INVITE",
    "m: <sip:sipp@10.0.0.1:5060>",
    "k: timer",
    "c: application/sdp",
    f"l: {len(SDP)}",
    body=SDP,
)

FOLDED_INVITE = crlf(
    "INVITE sip:+8613800138000@10.0.0.2;user=phone SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.1:5060",
    "   ;branch=z9hG4bKfold",
    "From: <sip:1058001234@10.0.0.1>;tag=ff",
    "To: <sip:+8613800138000@10.0.0.2;user=phone>",
    "Subject: a very long",
    "\tsubject line",
    "Call-ID: fold-1",
    "CSeq: 1 INVITE",
    "Content-Length: 0",
)

# SIPp answers with every Via on one comma-separated line.
SIPP_180 = crlf(
    "SIP/2.0 180 Ringing",
    "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKcagt0x1;rport=5060;received=10.0.0.5, "
    "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-0",
    "From: sipp <sip:1058001234@10.0.0.1:5060>;tag=4242SIPpTag001",
    "To: <sip:13800138000@10.0.0.2:5060>;tag=uas1",
    "Call-ID: 1-4242@10.0.0.1",
    "CSeq: 1 INVITE",
    "Contact: <sip:uas@10.0.0.9:5070>",
    "Content-Length: 0",
)

RESP_100 = crlf(
    "SIP/2.0 100 Trying",
    "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKcagt0x1",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-0",
    "From: <sip:a@b>;tag=1",
    "To: <sip:c@d>",
    "Call-ID: x",
    "CSeq: 1 INVITE",
    "Content-Length: 0",
)

RESP_200 = crlf(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP [2001:db8::5]:5062;branch=z9hG4bKcagt0x1;rport",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-0",
    "Record-Route: <sip:10.0.0.5:5060;lr;cag=abc>",
    "From: <sip:a@b>;tag=1",
    "To: <sip:c@d>;tag=2",
    "Call-ID: x",
    "CSeq: 1 INVITE",
    "Contact: <sip:uas@10.0.0.9:5070>",
    "Content-Type: application/sdp",
    f"Content-Length: {len(SDP)}",
    body=SDP,
)

REPEATED = crlf(
    "BYE sip:sipp@10.0.0.1:5060 SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKb1",
    "Via: SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bKb2",
    "Route: <sip:10.0.0.5:5060;lr;cag=t1>, <sip:10.0.0.6;lr>",
    "Route: <sip:10.0.0.7;lr>",
    "From: <sip:a@b>;tag=1",
    "To: <sip:c@d>;tag=2",
    "Call-ID: bye-1",
    "CSeq: 2 BYE",
    "Allow: INVITE, ACK",
    "Allow: BYE",
    "Date: Sat, 28 Nov 2026 17:00:00 GMT",
    "Content-Length: 0",
)

ALL_VALID = [SIPP_INVITE, COMPACT_INVITE, FOLDED_INVITE, SIPP_180, RESP_100, RESP_200, REPEATED]


def invite_with(
    *replace: tuple[str, str | None], extra: tuple[str, ...] = (), body: bytes = b""
) -> bytes:
    """The SIPp INVITE (no SDP) with some lines replaced (None = dropped) and extra lines."""
    base = [
        ("start", "INVITE sip:13800138000@10.0.0.2:5060 SIP/2.0"),
        ("via", "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1"),
        ("from", "From: <sip:1058001234@10.0.0.1>;tag=a"),
        ("to", "To: <sip:13800138000@10.0.0.2>"),
        ("call-id", "Call-ID: c1"),
        ("cseq", "CSeq: 1 INVITE"),
        ("max-forwards", "Max-Forwards: 70"),
        ("content-length", f"Content-Length: {len(body)}"),
    ]
    repl = dict(replace)
    lines = [repl.get(k, v) if k in repl else v for k, v in base]
    out = [line for line in lines if line is not None]
    out[-1:-1] = list(extra)
    return crlf(*out, body=body)


INJECT = "Call-ID: c1\rX-Injected: 1"
# Hostile requests: each must be answered 400-class or dropped, never crash a worker
# (tests/unit/proxy/test_fuzz.py through the proxy core, test_sip_parser via parse).
HOSTILE = {
    "no_via": invite_with(("via", None)),
    "no_from": invite_with(("from", None)),
    "no_to": invite_with(("to", None)),
    "no_call_id": invite_with(("call-id", None)),
    "no_cseq": invite_with(("cseq", None)),
    "bad_content_length": invite_with(("content-length", "Content-Length: abc")),
    "negative_content_length": invite_with(("content-length", "Content-Length: -5")),
    "short_body": invite_with(("content-length", "Content-Length: 500")),
    "huge_content_length": invite_with(("content-length", "Content-Length: 99999999999999999999")),
    "bare_cr_in_call_id": invite_with(("call-id", INJECT)),
    "nul_in_call_id": invite_with(("call-id", "Call-ID: c1\0X-Injected: 1")),
    "crlf_in_from_tag": invite_with(("from", "From: <sip:1058001234@10.0.0.1>;tag=a%0d%0aX-Injected: 1")),
    "invalid_utf8": crlf(
        "INVITE sip:13800138000@10.0.0.2 SIP/2.0",
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-u",
        "From: <sip:1058001234@10.0.0.1>;tag=\xff\xfe",
        "To: <sip:13800138000@10.0.0.2>",
        "Call-ID: \xc3\x28",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ),
    "huge_via_stack": invite_with(
        ("via", "\r\n".join(f"Via: SIP/2.0/UDP 10.0.{i // 256}.{i % 256}:5060;branch=z9hG4bK{i}" for i in range(500)))
    ),
    "one_line_via_stack": invite_with(
        ("via", "Via: " + ", ".join(f"SIP/2.0/UDP 10.0.0.{i % 256};branch=z9hG4bK{i}" for i in range(2000)))
    ),
    "many_headers": invite_with(extra=tuple(f"X-H{i}: v" for i in range(1000))),
    "long_header": invite_with(extra=("X-Long: " + "a" * 100_000,)),
    "bad_request_line": b"INVITE\r\n\r\n",
    "bad_version": invite_with(("start", "INVITE sip:13800138000@10.0.0.2:5060 SIP/3.0")),
    "bad_cseq": invite_with(("cseq", "CSeq: x INVITE")),
    "cseq_method_mismatch": invite_with(("cseq", "CSeq: 1 BYE")),
    "max_forwards_garbage": invite_with(("max-forwards", "Max-Forwards: -1")),
    "only_crlf": b"\r\n\r\n\r\n",
    "nul_bytes": b"\0" * 1000,
    "http_get": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "response_garbage": b"SIP/2.0 999999999999 \xff\r\nVia: ;;;\r\n\r\n",
}


def mutate(draw: st.DrawFn, corpus: Sequence[bytes], max_ops: int, chars: bytes, inserts: Sequence[bytes]) -> bytes:
    """A corpus message with 1..max_ops random edits: a byte set to one of ``chars``, random bytes
    inserted, a run deleted, or one of ``inserts`` (header starts, separators) put in."""
    data = bytearray(draw(st.sampled_from(list(corpus))))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and pos < len(data):
            data[pos] = draw(st.sampled_from(chars))
        elif op == 1:
            data[pos:pos] = draw(st.binary(max_size=8))
        elif op == 2:
            del data[pos : pos + draw(st.integers(1, 20))]
        else:
            data[pos:pos] = draw(st.sampled_from(list(inserts)))
    return bytes(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    return mutate(
        draw, ALL_VALID, 8, b'\r\n\0 \t:;,<>"@x9\xff',
        [b"\r\n", b",", b";branch=", b"Via: ", b"\r\n ", b"l: 5\r\n"],
    )
