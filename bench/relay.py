"""A bare stateless SIP relay over UDP: the ceiling of Python on this box, and a ``--proxy`` for the sweep.

    python -m bench.relay --listen 5080 --next-hop 127.0.0.1:5070

Not a product and not a fake of one: it is the "Python relay, uvloop" of
the reference figures in docs/performance.md (no full parse, no
transactions, no policy), so a sweep can put the gateway beside it in the
same run:

    python -m bench sweep --proxy "relay=python -m bench.relay --listen {port} --next-hop {next_hop}"

What it does per datagram:

- a request: our Via line goes in after the start line (branch derived from
  the request's own top branch, so retransmissions keep it), an INVITE also
  gets ``Record-Route: <sip:127.0.0.1:PORT;lr>`` so the caller's ACK and BYE
  come back through here; then it goes to the next hop, whatever its
  Request-URI or Route say;
- a response: our Via value comes off the top (also from a comma-joined
  line, as SIPp writes them) and the response goes to the sent-by of the Via
  below it.

Requests from the next hop (a callee's BYE) are dropped: a stateless relay
with one fixed next hop has nowhere to send them. The bench's call scenario
never sends one.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket

_VIA = re.compile(rb"\r\n(?:via|v)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_BRANCH = re.compile(rb"branch=([^;, \t\r\n]+)", re.IGNORECASE)
_SENT_BY = re.compile(rb"SIP/2\.0/[A-Za-z]+[ \t]+([^;, \t]+)")


def _addr(sent_by: bytes) -> tuple[str, int]:
    host, _, port = sent_by.decode("latin-1").rpartition(":")
    if not host:
        return sent_by.decode("latin-1"), 5060
    return host.strip("[]"), int(port)


class Relay(asyncio.DatagramProtocol):
    def __init__(self, port: int, next_hop: tuple[str, int]) -> None:
        self.port = port
        self.next_hop = next_hop
        self.via_prefix = f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-r".encode()
        self.rr = f"\r\nRecord-Route: <sip:127.0.0.1:{port};lr>".encode()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            out = self._response(data) if data.startswith(b"SIP/2.0 ") else self._request(data, addr)
        except (ValueError, IndexError):
            return  # not SIP enough to relay: a stateless relay just drops it
        if out is not None and self.transport is not None:
            self.transport.sendto(out[0], out[1])

    def _request(self, data: bytes, addr: tuple[str, int]) -> tuple[bytes, tuple[str, int]] | None:
        if addr == self.next_hop:
            return None
        eol = data.index(b"\r\n")
        via = _VIA.search(data)
        m = _BRANCH.search(via.group(1)) if via else None
        branch = m.group(1) if m else b"x"
        head = data[:eol] + b"\r\n" + self.via_prefix + branch
        if data.startswith(b"INVITE "):
            head += self.rr
        return head + data[eol:], self.next_hop

    def _response(self, data: bytes) -> tuple[bytes, tuple[str, int]] | None:
        via = _VIA.search(data)
        if via is None:
            return None
        value = via.group(1)
        comma = value.find(b",")
        if comma >= 0:  # "Via: ours, theirs": keep theirs on the line
            rest = value[comma + 1 :].lstrip()
            data = data[: via.start(1)] + rest + data[via.end(1) :]
            nxt = rest
        else:
            data = data[: via.start()] + data[via.end() :]
            below = _VIA.search(data)
            if below is None:
                return None
            nxt = below.group(1)
        m = _SENT_BY.match(nxt)
        if m is None:
            return None
        return data, _addr(m.group(1))


async def serve(port: int, next_hop: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", port))
    await loop.create_datagram_endpoint(lambda: Relay(port, next_hop), sock=sock)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=int, required=True, help="UDP port on 127.0.0.1")
    ap.add_argument("--next-hop", required=True, help="HOST:PORT every request goes to")
    args = ap.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        runner(serve(args.listen, _addr(args.next_hop.encode())))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
