"""The Record-Route token: proof, verifiable without shared state, that a dialog was admitted.

Any worker on any node holding ``rr_secret`` can check an in-dialog request's
Route: the token carries the audit record id, the next-hop index and the
trunk id, and an HMAC-SHA256 (truncated to 96 bits) over those and the
dialog's Call-ID and caller tag. A trunk that adds a To-tag to skip admission
has no token that verifies, so it gets 481 (SPEC §6 "Dialogs").

Requests from the callee carry the caller's tag in To rather than From, so
``verify`` tries the tags the caller gives, in order, and says which matched:
that index is the request's direction (``routing.py``), whatever its source
address.

Most in-dialog requests reach the worker that minted their token (the
trunk's source address hashes to the same SO_REUSEPORT socket), so the
tokens minted here are remembered, bounded, with what they were minted for:
checking one is then a dict lookup and two string compares instead of two
base64 decodes and an HMAC per tag. Any other token is verified in full.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol, final

_SEP = b"\x1f"
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_MAC_BYTES = 12
MINTED_MAX = 65536  # tokens remembered per worker (a few hundred bytes each)
# ... and for at most this long (s). Bounded by count alone, the cache filled at the rate of
# admitted calls: ~3.5 minutes at 300 admitted calls/s per worker (a saturated box sheds the
# rest), so a worker's RSS still grew for minutes after the sweep's 2-minute warm-up. By
# age, it is full after MINTED_TTL at any rate. The same 64·T1 as the in-dialog route map;
# a token forgotten is still verified, by its MAC (a few µs more).
MINTED_TTL = 64.0


@dataclass(frozen=True, slots=True)
@final
class DialogInfo:
    record_id: str
    hop: int
    trunk_id: str


class _Mac(Protocol):
    def copy(self) -> _Mac: ...
    def update(self, msg: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _keyed(secret: bytes) -> _Mac:
    """The keyed HMAC-SHA256 state: the C object hmac.new wraps, so copy / update / digest skip
    hmac.HMAC's Python layer (one MAC per INVITE); hmac.new itself without OpenSSL's hashlib."""
    try:
        from _hashlib import hmac_new
    except ImportError:
        return hmac.new(secret, digestmod="sha256")
    return hmac_new(secret, digestmod="sha256")


def _b64(raw: bytes) -> str:
    """``base64.urlsafe_b64encode`` without padding, minus its Python wrappers (once per INVITE)."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@final
class RouteToken:
    __slots__ = ("_age", "_hmac", "_minted", "_minted_max", "_minted_ttl", "_secret")

    def __init__(
        self, secret: bytes, minted_max: int = MINTED_MAX, minted_ttl: float = MINTED_TTL
    ) -> None:
        if not secret:
            raise ValueError("rr_secret must not be empty")
        self._secret = secret
        # The keyed state, computed once: copying it skips the key schedule of every MAC.
        self._hmac = _keyed(secret)
        # token -> "record_id \x1f hop \x1f trunk_id \x1f call_id \x1f tag it was bound to": the
        # MAC's fields and separator (the first three never hold one: ``mint`` checks);
        # insertion order = age. One string: a tuple kept four more strings alive per token.
        self._minted: dict[str, str] = {}
        # The remembered tokens, oldest first. Not ``next(iter(_minted))``: a dict keeps the
        # slots of deleted entries at its front until it resizes, and iterating skips them
        # one by one, so evicting the oldest cost ~25 µs per INVITE once 65,536 were kept.
        self._age: deque[tuple[str, float]] = deque()  # (token, minted at)
        self._minted_max = minted_max
        self._minted_ttl = minted_ttl

    def _mac(self, call_id: str, tag: str, payload: bytes) -> bytes:
        h = self._hmac.copy()
        h.update(b"".join((call_id.encode(), _SEP, tag.encode(), _SEP, payload)))
        return h.digest()[:_MAC_BYTES]

    def mint(
        self, call_id: str, from_tag: str, record_id: str, hop: int, trunk_id: str, now: float = 0.0
    ) -> str:
        """A token-safe string (base64url and '.'), usable unquoted as a URI parameter value.

        Remembered (``now``: the core's time) until ``minted_ttl`` later or until
        ``minted_max`` newer ones push it out, whichever comes first.
        """
        payload = _SEP.join((record_id.encode(), str(hop).encode(), trunk_id.encode()))
        token = f"{_b64(payload)}.{_b64(self._mac(call_id, from_tag, payload))}"
        if len(payload.split(_SEP)) == 3:  # else verify refuses it: never remember it as good
            minted = self._minted
            age = self._age
            old = now - self._minted_ttl
            while age and age[0][1] <= old:
                minted.pop(age.popleft()[0], None)
            if token not in minted:  # the same call minted twice gives the same token: kept once
                while len(minted) >= self._minted_max and age:
                    minted.pop(age.popleft()[0], None)
                age.append((token, now))
            minted[token] = f"{record_id}\x1f{hop}\x1f{trunk_id}\x1f{call_id}\x1f{from_tag}"
        return token

    def verify(
        self, token: str, call_id: str, tags: tuple[str | None, ...]
    ) -> tuple[DialogInfo, int] | None:
        """``(info, index of the tag that verified)``, or None for a forged / foreign / broken token."""
        known = self._minted.get(token)
        if known is not None:
            # Same answer the MAC would give: it verifies exactly for the call and tag it was
            # minted with, read with the MAC's own separator.
            record_id, hop, trunk_id, bound = known.split("\x1f", 3)
            for i, tag in enumerate(tags):
                if tag is not None and bound == f"{call_id}\x1f{tag}":
                    return DialogInfo(record_id, int(hop), trunk_id), i
            return None
        body, dot, mac_text = token.partition(".")
        if not dot:
            return None
        try:
            payload = _unb64(body)
            mac = _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        if len(mac) != _MAC_BYTES:
            return None
        for i, tag in enumerate(tags):
            if tag is None:
                continue
            if hmac.compare_digest(mac, self._mac(call_id, tag, payload)):
                parts = payload.split(_SEP)
                if len(parts) != 3 or not parts[1].isdigit():
                    return None
                try:
                    info = DialogInfo(parts[0].decode(), int(parts[1]), parts[2].decode())
                except UnicodeDecodeError:
                    return None
                return info, i
        return None
