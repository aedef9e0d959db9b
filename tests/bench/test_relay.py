"""bench.relay, the bare stateless relay the sweep can put beside the gateway: its two edits."""

from __future__ import annotations

from bench.relay import Relay

HOP = ("127.0.0.1", 5070)
UAC = ("127.0.0.1", 6000)

INVITE = (
    b"INVITE sip:callee@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-abc;rport\r\n"
    b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_request_gets_our_via_first_and_an_invite_our_record_route() -> None:
    data, dest = Relay(5080, HOP)._request(INVITE, UAC)  # type: ignore[misc]
    lines = data.split(b"\r\n")
    assert dest == HOP
    assert lines[0] == INVITE.split(b"\r\n")[0]
    assert lines[1] == b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-rz9hG4bK-abc"
    assert lines[2] == b"Record-Route: <sip:127.0.0.1:5080;lr>"
    assert data.endswith(INVITE.split(b"\r\n", 1)[1])  # the rest untouched
    bye = INVITE.replace(b"INVITE sip", b"BYE sip", 1).replace(b"1 INVITE", b"2 BYE")
    out = Relay(5080, HOP)._request(bye, UAC)
    assert out is not None and b"Record-Route" not in out[0]
    assert Relay(5080, HOP)._request(bye, HOP) is None  # from the next hop: nowhere to send it


def test_response_loses_our_via_and_goes_to_the_one_below() -> None:
    relay = Relay(5080, HOP)
    fwd, _ = relay._request(INVITE, UAC)  # type: ignore[misc]
    head = fwd.split(b"\r\n\r\n")[0].split(b"\r\n")
    vias = [x for x in head if x.startswith(b"Via")]
    rest = b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    separate = b"SIP/2.0 200 OK\r\n" + b"\r\n".join(vias) + b"\r\n" + rest
    joined = b"SIP/2.0 200 OK\r\nVia: " + b", ".join(v.split(b": ", 1)[1] for v in vias) + b"\r\n" + rest
    for resp in (separate, joined):  # SIPp writes the Vias of a response on one line
        out = relay._response(resp)
        assert out is not None
        data, dest = out
        assert dest == UAC
        assert b"5080" not in data
        assert data == b"SIP/2.0 200 OK\r\n" + vias[1] + b"\r\n" + rest


def test_garbage_is_dropped_not_raised() -> None:
    relay = Relay(5080, HOP)
    relay.datagram_received(b"\x00\x01junk", UAC)
    relay.datagram_received(b"SIP/2.0 200 OK\r\n\r\n", HOP)
    assert relay._response(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n") is None
