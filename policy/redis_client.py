"""Redis URL → client, Sentinel included: one place for every component that connects.

Why Sentinel: with a primary and replicas watched by Redis Sentinel, a
failover needs no virtual IP; the client asks the sentinels who the primary
is, and asks again when its connection breaks. redis-py has the client
(``redis.asyncio.sentinel.Sentinel``); what it lacks is a URL form, and every
setting here (``redis_url``, ``--redis-url``) is a URL. So:

    redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/MASTER[/DB][?options]

* hosts are the sentinels (default port 26379), ``MASTER`` the monitored
  name, ``DB`` the database (default 0);
* the user/password are the data nodes' (``AUTH`` on the primary);
* ``?sentinel_password=…`` (and ``sentinel_username``) when the sentinels
  themselves require AUTH; ``?ssl=true`` for TLS to the data nodes.

``rediss+sentinel://`` is the same with TLS. Everything else goes to
``from_url`` unchanged (redis://, rediss://, unix://). The audit sink and
archiver can adopt ``async_client`` / ``sync_client`` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aioredis

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379

__all__ = ["SentinelURL", "async_client", "is_sentinel", "parse_sentinel_url", "sync_client"]


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse; raises ValueError naming what is wrong (the URL's password is never echoed)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a sentinel URL (scheme {scheme!r}; expected redis+sentinel://)")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, pw = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    sentinels: list[tuple[str, int]] = []
    for hostport in netloc.split(","):
        hostport = hostport.strip()
        if not hostport:
            continue
        if hostport.startswith("["):  # [v6]:port
            host, _, rest = hostport[1:].partition("]")
            port_text = rest.lstrip(":")
        else:
            host, _, port_text = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "")
        try:
            port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"sentinel URL: bad port in {hostport!r}") from None
        sentinels.append((host, port))
    if not sentinels:
        raise ValueError("sentinel URL: no sentinel host (redis+sentinel://HOST:26379/MASTER)")
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("sentinel URL: no master name (redis+sentinel://HOST:26379/MASTER[/DB])")
    master = unquote(path[0])
    db = 0
    if len(path) > 1:
        try:
            db = int(path[1])
        except ValueError:
            raise ValueError(f"sentinel URL: database must be a number, got {path[1]!r}") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    sentinel_kwargs: dict[str, Any] = {}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"]
    if "sentinel_username" in query:
        sentinel_kwargs["username"] = query["sentinel_username"]
    if "db" in query:
        db = int(query["db"])
    ssl = scheme == "rediss+sentinel" or query.get("ssl", "").lower() in ("1", "true", "yes")
    return SentinelURL(tuple(sentinels), master, db, username, password, ssl, sentinel_kwargs)


def _sentinel_opts(opts: dict[str, Any]) -> dict[str, Any]:
    """Timeouts apply to the sentinels too: a dead sentinel must not stall the look-up."""
    return {k: opts[k] for k in ("socket_timeout", "socket_connect_timeout") if k in opts}


def _primary(url: str, opts: dict[str, Any], sentinel_class: Any, redis_class: Any) -> Any:
    """The client of a sentinel URL's primary, for either flavour of redis-py (the twins share this)."""
    s = parse_sentinel_url(url)
    sentinel = sentinel_class(
        list(s.sentinels), sentinel_kwargs={**_sentinel_opts(opts), **s.sentinel_kwargs}, **_sentinel_opts(opts)
    )
    data_opts = {**opts, "db": s.db, "username": s.username, "password": s.password}
    if s.ssl:
        data_opts["ssl"] = True
    return sentinel.master_for(s.master, redis_class=redis_class, **data_opts)


def async_client(url: str, **opts: Any) -> aioredis.Redis:
    """An asyncio client for ``url``; with a sentinel URL, one that follows the primary."""
    if not is_sentinel(url):
        return aioredis.Redis.from_url(url, **opts)
    from redis.asyncio.sentinel import Sentinel

    client: aioredis.Redis = _primary(url, opts, Sentinel, aioredis.Redis)
    return client


def sync_client(url: str, **opts: Any) -> redis.Redis:
    """A blocking client for ``url`` (health checks, CLI tools); sentinel URLs as in ``async_client``."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **opts)
    from redis.sentinel import Sentinel

    client: redis.Redis = _primary(url, opts, Sentinel, redis.Redis)
    return client
