"""SIP over TLS: the contexts built from the configured files, and their reload (issue 15).

TLS is a stream transport like TCP: the same framing (``gateway.sip.StreamFramer``),
the same connection classes (``gateway.transport``), responses on the request's
connection. This module only turns the settings into ``ssl.SSLContext`` objects:

- **server** (``tls:`` listen addresses): our certificate and key, TLS 1.2 or
  later; with ``tls_verify_client`` a client certificate is required and must
  verify against ``tls_ca_file`` (the handshake fails otherwise). The trunk is
  still identified by its source address (SPEC §2): the certificate only
  authenticates the connection.
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

import logging
import ssl
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

