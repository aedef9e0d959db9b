"""bench/kamailio: the comparison proxy's configuration is filled in for each run."""

from __future__ import annotations

from bench.kamailio.run import render


def test_render_fills_port_next_hop_and_redis() -> None:
    cfg = render(15099, "127.0.0.1:15098", "/tmp/x/redis.sock")
    assert '"!LISTEN!udp:127.0.0.1:15099!"' in cfg
    assert '"!NEXT_HOP!127.0.0.1:15098!"' in cfg
    assert '"!REDIS!unix=/tmp/x/redis.sock!"' in cfg
    # Every placeholder of the shipped file was replaced: a forgotten one would
    # make Kamailio listen on port 0 or relay to the wrong peer.
    assert "udp:127.0.0.1:0!" not in cfg and "5070" not in cfg and "/tmp/redis.sock" not in cfg
    assert "ndb_redis" in cfg and "htable" in cfg and "record_route()" in cfg
