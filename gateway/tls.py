"""SIP over TLS: the contexts built from the configured files, and their reload (issue 15).

TLS is a stream transport like TCP: the same framing (``gateway.sip.StreamFramer``),
the same connection classes (``gateway.transport``), responses on the request's
connection. This module only turns the settings into ``ssl.SSLContext`` objects:

- **server** (``tls:`` listen addresses): our certificate and key, TLS 1.2 or
  later; with ``tls_verify_client`` a client certificate is required and must
  verify against ``tls_ca_file`` (the handshake fails otherwise). The trunk is
  identified by its source address (SPEC §2); a trunk whose record lists
  ``tls_fingerprints`` must also present one of those certificates
  (``TrunkCertCheck``), so a certificate the CA vouches for cannot be used by
  another trunk, nor an address of this trunk without its certificate.
- **client** (``tls:`` next hops): the hop's certificate verified against
  ``tls_ca_file`` (or the system store), host name or IP included, unless
  ``tls_verify_hop`` is off; our certificate is shown when the hop asks (mutual TLS).

Reload (SIGHUP): the files are loaded again into the *same* context objects,
so new handshakes use the new certificate and established connections keep
theirs. A certificate, key or CA file that fails to load leaves the running one
in place (logged): a bad file never takes TLS down. A CA file's certificates
are added on reload; one removed from the file stays trusted until a restart.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Protocol

log = logging.getLogger("cag.tls")


class TlsSettings(Protocol):
    """The settings this module reads (``gateway.config.Settings`` has them)."""

    listen: list[str]
    next_hop: list[str]
    tls_cert_file: Path | None
    tls_key_file: Path | None
    tls_ca_file: Path | None
    tls_verify_client: bool
    tls_verify_hop: bool


def advertised_tls(settings: TlsSettings, host: str) -> tuple[str, int] | None:
    """Our TLS address for Record-Route and Via: the first ``tls:`` listen address
    (a wildcard host → ``host``, the advertised one); None without TLS listening."""
    from gateway.config import parse_listen

    for item in settings.listen:
        transport, h, port = parse_listen(item)
        if transport == "tls":
            return (host if h in ("0.0.0.0", "::") else h), port
    return None


def wanted(settings: TlsSettings) -> bool:
    """Is TLS used at all (a ``tls:`` listen address or next hop)?"""
    return any(x.strip().lower().startswith("tls:") for x in (*settings.listen, *settings.next_hop))


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate in the stored form (``policy.model.normalize_fingerprint``)."""
    return hashlib.sha256(der).digest().hex(":").upper()


class TrunkCertCheck:
    """Is the certificate a TLS peer presented one its trunk lists? Called once per accepted
    connection, when the handshake has completed (``gateway.transport.TcpConnection``).

    ``fingerprints_for(ip)``: the ``tls_fingerprints`` of the trunk owning ``ip`` in the
    current reference snapshot (empty: no trunk, or one identified by address alone: the
    connection is accepted as before, the core still drops unknown sources). A refusal is
    counted (``cag_proxy_events_total{event="tls_peer_rejected"}``, like ``tcp_rejected_limit``)
    and logged, at most one line a second.
    """

    EVENT = "tls_peer_rejected"

    def __init__(
        self,
        fingerprints_for: Callable[[str], Collection[str]],
        on_event: Callable[[str], None],
        log_interval: float = 1.0,
    ) -> None:
        self.fingerprints_for = fingerprints_for
        self.on_event = on_event
        self.log_interval = log_interval
        self._logged_at = -float("inf")
        self._suppressed = 0

    def __call__(self, ip: str, der: bytes | None) -> bool:
        wanted = self.fingerprints_for(ip)
        if not wanted:
            return True
        got = fingerprint(der) if der else None
        if got is not None and got in wanted:
            return True
        self.on_event(self.EVENT)
        now = time.monotonic()
        if now - self._logged_at < self.log_interval:
            self._suppressed += 1
            return False
        self._logged_at = now
        log.warning(
            "TLS connection from %s closed: %s (trunk lists %d fingerprint(s)); %d more suppressed",
            ip,
            f"certificate {got} is not the trunk's"
            if got
            else "no client certificate (tls_verify_client off?)",
            len(wanted),
            self._suppressed,
        )
        self._suppressed = 0
        return False


class TlsContexts:
    """The server and client contexts of one process; ``reload`` re-reads the files into them.

    ``live``: registered for ``reload_all`` (a worker's); the supervisor only
    builds one to check the files before forking.
    """

    def __init__(self, settings: TlsSettings, *, live: bool = True) -> None:
        self.settings = settings
        self.server: ssl.SSLContext | None = None
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.tls_verify_hop:
            if settings.tls_ca_file:
                self.client.load_verify_locations(cafile=str(settings.tls_ca_file))
            else:
                self.client.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            self.client.check_hostname = False
            self.client.verify_mode = ssl.CERT_NONE
        if settings.tls_cert_file and settings.tls_key_file:
            self.client.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
        if any(x.strip().lower().startswith("tls:") for x in settings.listen):
            if not (settings.tls_cert_file and settings.tls_key_file):
                raise ValueError("a tls: listen address needs tls_cert_file and tls_key_file")
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server.minimum_version = ssl.TLSVersion.TLSv1_2
            server.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
            if settings.tls_verify_client:
                if not settings.tls_ca_file:
                    raise ValueError("tls_verify_client needs tls_ca_file")
                server.load_verify_locations(cafile=str(settings.tls_ca_file))
                server.verify_mode = ssl.CERT_REQUIRED
            self.server = server
        if live:
            _LIVE.append(self)

    def reload(self) -> bool:
        """Load the files again into the running contexts; False (logged) when one fails."""
        s = self.settings
        try:
            # Checked on a scratch context first: a failing load_cert_chain on a live
            # context could leave it half-updated.
            scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            if s.tls_cert_file and s.tls_key_file:
                scratch.load_cert_chain(str(s.tls_cert_file), str(s.tls_key_file))
            if s.tls_ca_file:
                scratch.load_verify_locations(cafile=str(s.tls_ca_file))
        except (OSError, ssl.SSLError, ValueError) as e:
            log.error("TLS reload: the files do not load, the running certificate is kept: %s", e)
            return False
        for ctx in (self.server, self.client):
            if ctx is None:
                continue
            if s.tls_cert_file and s.tls_key_file:
                ctx.load_cert_chain(str(s.tls_cert_file), str(s.tls_key_file))
            if s.tls_ca_file and ctx.verify_mode != ssl.CERT_NONE:
                ctx.load_verify_locations(cafile=str(s.tls_ca_file))
        log.info("TLS certificate reloaded from %s", s.tls_cert_file)
        return True


_LIVE: list[TlsContexts] = []  # this process's contexts, for reload_all


def reload_all() -> None:
    """SIGHUP in a worker: every context this process built takes the files again."""
    for contexts in _LIVE:
        contexts.reload()
