"""Number normalisation and classification (SPEC §3).

Every comparison the gateway makes between numbers — caller against filing
(R3/R4), PAI against From (R7), callee against consent and DNC (R1/R11) —
is an exact string match, so all of them go through ``normalize_number``
first and the loader stores filings, consents and DNC entries in the same
form. The function is idempotent (normalising a normalised number returns
it unchanged), which is what makes that exact matching safe.

Carrier short access numbers (95xxx, 96xxx, 400/800, short service codes)
are kept as plain digits: they are not E.164 subscriber numbers, and R4
forbids any change of their length, so they must never be "helpfully"
re-formatted. phonenumbers is slow compared with the rest of the hot path,
so results are cached.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers import timezone as pn_timezone

__all__ = [
    "is_access_number",
    "is_subscriber_number",
    "national_key",
    "normalize_number",
    "number_kind",
    "number_timezone",
]

_SEPARATORS = str.maketrans("", "", " \t-.()/")

_KINDS: dict[int, str] = {
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE: "fixed",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium",
    PhoneNumberType.VOIP: "voip",
}

# R5: a call-centre trunk may not present subscriber numbers.
SUBSCRIBER_KINDS = frozenset({"mobile", "fixed", "fixed_or_mobile"})


def is_access_number(digits: str) -> bool:
    """Carrier access numbers that must be kept exact (81号 二(三), R4).

    95/96 numbers of 5 to 8 digits, 10-digit 400/800 numbers, and any code of at
    most 6 digits (service codes such as 10086 or 12345): phonenumbers would
    prefix them with +86 or reject them, either of which breaks exact matching.
    """
    if not digits.isdigit() or not digits.isascii():
        return False
    n = len(digits)
    if n <= 6:
        return True
    if digits[:2] in ("95", "96") and 5 <= n <= 8:
        return True
    return n == 10 and digits[:3] in ("400", "800")


def normalize_number(raw: str | None, region: str = "CN") -> str | None:
    """The one canonical form of a dialled or presented number, or None if it is not a number.

    E.164 ("+8613800138000") for ordinary numbers, bare digits for access
    numbers (also when presented as +86 95588), and the digits as given (with
    '+' if present) when phonenumbers cannot parse them, so that exact
    matching still works for odd numbering plans instead of failing open.
    Non-numeric users such as "anonymous" give None: the caller-ID check
    (R7) treats that as a missing caller.
    """
    if not raw:
        return None
    # Fast path for the common callee: a Chinese mobile number, national or
    # E.164, is its own canonical form without a phonenumbers round trip
    # (that parse dominates the in-memory rule cost on a cache miss).
    if region == "CN":
        n = len(raw)
        # 179xx are carrier-selection prefixes, not mobile ranges: no fast path.
        if n == 11 and raw[0] == "1" and raw[1] in "345689" and raw.isdigit() and raw.isascii():
            return "+86" + raw
        if n == 14 and raw.startswith("+861") and raw[4] in "345689" and raw[1:].isdigit() and raw.isascii():
            return raw
    return _normalize(raw, region)


@lru_cache(maxsize=65536)
def _normalize(raw: str, region: str) -> str | None:
    # phonenumbers eats leading zeros of nonsense numbers one parse at a time
    # ("000000001" -> "+8600000001" -> "+860000001"); iterate to the fixed point
    # so that normalising a normalised number never changes it.
    result = _normalize_once(raw, region)
    for _ in range(8):
        if result is None or result == raw:
            break
        again = _normalize_once(result, region)
        if again == result:
            break
        result = again
    return result


def _normalize_once(raw: str, region: str) -> str | None:
    text = raw.strip()
    if text[:4].lower() == "tel:":
        text = text[4:]
    # tel-URI / user parameters (";phone-context=...", ";isub=...") are not part of the number.
    text = text.split(";", 1)[0].translate(_SEPARATORS)
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    if not digits or not digits.isdigit() or not digits.isascii():
        return None
    if not plus and digits.startswith("0086") and len(digits) > 4:
        plus, digits = True, digits[2:]
    if plus and digits.startswith("86") and is_access_number(digits[2:]) and len(digits) > 2:
        return digits[2:]
    if not plus and is_access_number(digits):
        return digits
    as_given = ("+" if plus else "") + digits
    try:
        parsed = phonenumbers.parse(as_given, region, keep_raw_input=True)
    except phonenumbers.NumberParseException:
        return as_given
    if parsed.preferred_domestic_carrier_code:
        # phonenumbers strips carrier-selection prefixes (12593, 17951, ...),
        # which would let "12593" + a filed number match that filing: R4 forbids
        # any change of number length, so such a number stays as it was given.
        return as_given
    e164 = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
    national = e164[3:] if e164.startswith("+86") else None
    if national is not None and is_access_number(national):
        # e.g. "4001234567" dialled with a trunk prefix; keep the access form.
        return national
    return e164


def national_key(number: str) -> str:
    """The digits a length comparison is made on (R4 "no change of number length").

    A +86 number is compared by its national digits so that an access number
    with digits appended (4001234567 → +8640012345678 after normalisation) is
    still seen as the filed number with its length changed; other countries
    keep their '+' so they never match a Chinese number by accident.
    """
    return number[3:] if number.startswith("+86") else number


@lru_cache(maxsize=65536)
def number_kind(number: str, region: str = "CN") -> str:
    """One of access, mobile, fixed, fixed_or_mobile, toll_free, premium, voip, other, invalid.

    Used by R5 (subscriber numbers may not be presented by a call centre).
    """
    n = normalize_number(number, region)
    if n is None:
        return "invalid"
    if is_access_number(n):
        return "access"
    try:
        parsed = phonenumbers.parse(n, region)
    except phonenumbers.NumberParseException:
        return "invalid"
    if not phonenumbers.is_valid_number(parsed):
        return "invalid"
    return _KINDS.get(phonenumbers.number_type(parsed), "other")


def is_subscriber_number(number: str, region: str = "CN") -> bool:
    """True for mobile and fixed-line numbers: R5 forbids call centres presenting them."""
    return number_kind(number, region) in SUBSCRIBER_KINDS


@lru_cache(maxsize=65536)
def number_timezone(number: str, default_tz: str = "Asia/Shanghai") -> str:
    """The callee's time zone, for quiet hours (R8) and the callee-local day of the caps (R6).

    China has one zone, and access numbers have no location, so both use the
    configured default; so does anything phonenumbers cannot place or a zone
    name this system's tz database does not know (never raise on the hot path).
    """
    n = number.strip()
    if not n.startswith("+") or n.startswith("+86"):
        return default_tz
    try:
        parsed = phonenumbers.parse(n, None)
    except phonenumbers.NumberParseException:
        return default_tz
    zones = pn_timezone.time_zones_for_number(parsed)
    if not zones or zones[0] == "Etc/Unknown":
        return default_tz
    try:
        ZoneInfo(zones[0])
    except (ZoneInfoNotFoundError, ValueError):
        return default_tz
    return zones[0]
