"""Where consents and DNC numbers live in Redis, and how they are encoded (no I/O).

Why a layout of its own: a national do-not-call list is ~100M numbers. One
hash per number costs ~200 B of key overhead each (22 GB); one set holding a
whole kind is a multi-GB key no Cluster can move and no command can touch
without stalling. So numbers are bucketed:

* a callee's **bucket** is its number without the last three digits, its
  **suffix** those three digits (``+8613800138000`` → ``+8613800138`` /
  ``000``). A national list covers a few per cent of the numbers in use, so a
  bucket holds tens of numbers: below the ``hash-max-listpack-entries`` (128
  to 512 depending on the build) up to which Redis keeps a small hash as a
  listpack (a few bytes per entry, no per-entry pointers),
  and enough of them that the per-key overhead (~90 B) is shared. Measured
  (docs/reference-data.md): 16 B per number at 6 % density, 32 B at 1 %, 64 B
  for a block where every number is registered (1,000 entries make the
  bucket a hashtable; ``hash-max-listpack-entries 1024`` keeps it compact);
* every per-callee key carries the bucket as its hash tag
  (``{c:+8613800138}000:day:…``), so the per-INVITE script still touches one
  slot per callee, bucket hashes included;
* DNC data is ``{c:<bucket>}:dnc:<gen>`` → ``suffix`` → an integer
  (``registered_at`` epoch seconds times 2, plus 1 for scope ``commercial``), so the
  listpack stores two small integers per number;
* consents are ``{c:<bucket>}:cs:<gen>`` → ``suffix:token`` → a msgpack
  array (see ``pack_consent``); ``""`` is a tombstone (a token moved to
  another callee by an upsert layer hides the copy below);
* the token index (token → callee, for ``consent_other_callee`` and
  ``show``) is ``{k:<shard>}:tok:<gen>``, 4,096 shards by CRC32 of the
  token (a listpack each up to ~2M consents).

Generations (``gen``) are what make a load all-or-nothing on Cluster too: a
load writes a new generation beside the live one and then switches one
pointer (``{cag:ref}:gen``). A kind's pointer is a list of at most two
layers, top first: a base written by ``--replace`` and an overlay written by
upserts; a lookup takes the first layer that has the field.

Operator state lives outside generations, so no reload undoes it:
``{c:<bucket>}:cu`` (consent use counts) and ``{c:<bucket>}:crv``
(revocations by ``consent revoke``), both keyed ``suffix:token``.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

import msgpack

from policy.rules.purpose import normalize_purpose

GEN_POINTER = "{cag:ref}:gen"  # hash kind -> "base[,overlay]"
GEN_SEQ = "{cag:ref}:genseq"  # generation ids
GC_QUEUE = "{cag:ref}:gc"  # zset "kind:gen" -> epoch s from which it may be deleted
OPS = "{cag:ref}:ops"  # hash "trunk:<id>" / "enterprise:<id>" -> msgpack operator status
LAYERED_KINDS = ("dnc", "consents")
TOKEN_SHARDS = 4096
INDEX_SHARDS = 256
SUFFIX_DIGITS = 3  # 1,000 numbers per bucket (see the module doc)
MAX_LAYERS = 2


def split(callee: str) -> tuple[str, str]:
    """(bucket, suffix) of a normalised number; very short numbers are a bucket of their own."""
    if len(callee) <= SUFFIX_DIGITS + 2:
        return callee, ""
    return callee[:-SUFFIX_DIGITS], callee[-SUFFIX_DIGITS:]


def callee_tag(callee: str) -> str:
    """Prefix of every per-callee key: hash tag = bucket, then the suffix (the full number stays readable)."""
    bucket, suffix = split(callee)
    return f"{{c:{bucket}}}{suffix}"


def dnc_layer_key(bucket: str, gen: int) -> str:
    return f"{{c:{bucket}}}:dnc:{gen}"


def consent_layer_key(bucket: str, gen: int) -> str:
    return f"{{c:{bucket}}}:cs:{gen}"


def used_key(bucket: str) -> str:
    return f"{{c:{bucket}}}:cu"


def revoked_key(bucket: str) -> str:
    return f"{{c:{bucket}}}:crv"


def consent_field(callee: str, token: str) -> str:
    return f"{split(callee)[1]}:{token}"


def token_shard(token: str) -> int:
    return zlib.crc32(token.encode()) % TOKEN_SHARDS


def token_layer_key(shard: int, gen: int) -> str:
    return f"{{k:{shard}}}:tok:{gen}"


def index_shard(bucket: str) -> int:
    return zlib.crc32(bucket.encode()) % INDEX_SHARDS


def index_key(kind: str, gen: int, shard: int) -> str:
    """Set of the buckets a generation wrote (sharded: no key holds a whole kind); used to delete it."""
    return f"{{g:{kind}:{gen}:{shard}}}:b"


def parse_layers(value: Any) -> tuple[int, ...]:
    """``"7,9"`` → (7, 9): top layer first."""
    if value is None:
        return ()
    text = value.decode() if isinstance(value, bytes) else str(value)
    return tuple(int(x) for x in text.split(",") if x.strip())


def format_layers(layers: tuple[int, ...]) -> str:
    return ",".join(str(g) for g in layers)


# ------------------------------------------------------------------ DNC values


def dnc_value(scope: str, registered_at: datetime | None) -> int:
    """One integer per number: listpack stores it in a few bytes."""
    secs = int(registered_at.timestamp()) if registered_at is not None else 0
    return max(secs, 0) * 2 + (1 if scope == "commercial" else 0)


def dnc_decode(value: Any) -> tuple[str, datetime | None]:
    v = int(value)
    secs, commercial = divmod(v, 2)
    at = datetime.fromtimestamp(secs, UTC) if secs else None
    return ("commercial" if commercial else "all"), at


# ------------------------------------------------------------------ consent values

# Order of the msgpack array; cag.lua (consent_of) reads the same positions.
CONSENT_FIELDS = ("ent", "np", "pur", "gr", "ex", "max", "ev", "rv")


def ms(t: datetime | None) -> int | str:
    return "" if t is None else round(t.timestamp() * 1000)


def pack_consent(
    enterprise_id: str,
    purpose: str,
    granted_at: datetime,
    expires_at: datetime | None,
    max_calls: int | None,
    evidence_ref: str,
    revoked_at: datetime | None,
) -> bytes:
    """The stored value; ``""`` stands for none so Lua needs no nil handling in arrays."""
    np = normalize_purpose(purpose) or ""
    return msgpack.packb(
        [
            enterprise_id,
            np,
            "" if purpose == np else purpose,  # the purpose as written, only when it differs
            ms(granted_at),
            ms(expires_at),
            "" if max_calls is None else max_calls,
            evidence_ref,
            ms(revoked_at),
        ]
    )


def unpack_consent(value: bytes) -> dict[str, Any]:
    arr = msgpack.unpackb(value)
    d = dict(zip(CONSENT_FIELDS, arr, strict=False))
    if d.get("pur") in ("", None):
        d["pur"] = d.get("np", "")
    return d


def from_ms(v: Any) -> datetime | None:
    if v in ("", None, b""):
        return None
    return datetime.fromtimestamp(int(v) / 1000, UTC)
