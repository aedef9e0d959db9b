"""The Record-Route token (gateway/proxy/dialog.py): what it binds, who can verify it, what it remembers."""

from __future__ import annotations

import pytest

from gateway.proxy import RouteToken


def test_route_token() -> None:
    t = RouteToken(b"k")
    tok = t.mint("cid", "ftag", "gw-0-1-abc", 2, "trunk-9")
    assert all(c.isalnum() or c in "-_." for c in tok)
    res = t.verify(tok, "cid", ("ftag",))
    assert res is not None and res[0].record_id == "gw-0-1-abc" and res[0].hop == 2 and res[0].trunk_id == "trunk-9"
    assert t.verify(tok, "cid", ("other", "ftag")) is not None and t.verify(tok, "cid", ("other", "ftag"))[1] == 1  # type: ignore[index]
    assert t.verify(tok, "cid2", ("ftag",)) is None
    assert RouteToken(b"k2").verify(tok, "cid", ("ftag",)) is None
    assert t.verify("garbage", "cid", ("ftag",)) is None
    assert t.verify("!!.??", "cid", ("ftag",)) is None


@pytest.mark.parametrize(
    ("call_id", "tags"),
    [("cid", ("ftag",)), ("cid", ("other", "ftag")), ("cid", (None, "ftag")), ("cid", ("other",)),
     ("cid2", ("ftag",)), ("cid", ())],
)
def test_token_minted_here_verifies_as_a_fresh_worker_would(call_id: str, tags: tuple[str | None, ...]) -> None:
    """The remembered-token shortcut gives the same answer as the full HMAC check of another worker."""
    minter, other = RouteToken(b"k"), RouteToken(b"k")
    tok = minter.mint("cid", "ftag", "gw-0-1-abc", 2, "trunk-9")
    assert minter.verify(tok, call_id, tags) == other.verify(tok, call_id, tags)


def test_remembered_tokens_are_bounded() -> None:
    t = RouteToken(b"k", minted_max=2)
    toks = [t.mint(f"c{i}", "f", f"r{i}", 0, "t") for i in range(3)]
    assert t.verify(toks[0], "c0", ("f",)) is not None  # forgotten, still verified in full
    assert len(t._minted) == 2


def _flip(text: str, i: int) -> str:
    """One base64url character changed (still a valid alphabet character)."""
    c = text[i]
    return text[:i] + ("A" if c != "A" else "B") + text[i + 1 :]


def test_tampered_tokens_never_verify() -> None:
    """Any changed character of the payload or the MAC, for the minter (remembered) and a fresh worker."""
    minter = RouteToken(b"k")
    tok = minter.mint("cid", "ftag", "gw-0-1-abc", 2, "trunk-9")
    body, mac = tok.split(".")
    forged = [_flip(body, i) + "." + mac for i in range(len(body))]
    forged += [body + "." + _flip(mac, i) for i in range(len(mac))]
    forged += [body + "." + mac[:-1], body + mac, "." + mac, body + ".", tok + "A"]
    # The payload of another dialog with this dialog's MAC (swap the trunk or the hop).
    other = minter.mint("cid", "ftag", "gw-0-1-abc", 3, "trunk-1")
    forged.append(other.split(".")[0] + "." + mac)
    for verifier in (minter, RouteToken(b"k")):
        for f in forged:
            if f == tok:
                continue
            assert verifier.verify(f, "cid", ("ftag",)) is None, f
        assert verifier.verify(tok, "cid", ("ftag",)) is not None


def test_tag_order_says_which_side_sent_the_request() -> None:
    """From the callee the caller's tag is in To: ``verify`` reports the index of the tag that matched."""
    for verifier_of in (lambda t: t, lambda t: RouteToken(b"k")):
        minter = RouteToken(b"k")
        tok = minter.mint("cid", "caller-tag", "rid", 0, "trunk")
        verifier = verifier_of(minter)
        # From the caller: (From tag,) -> index 0.
        assert verifier.verify(tok, "cid", ("caller-tag",))[1] == 0  # type: ignore[index]
        # From the callee: (To tag, From tag) = (caller's, callee's) -> index 0, the callee side.
        assert verifier.verify(tok, "cid", ("caller-tag", "callee-tag"))[1] == 0  # type: ignore[index]
        # From the caller seen by the hop check: (To tag, From tag) = (callee's, caller's) -> index 1.
        assert verifier.verify(tok, "cid", ("callee-tag", "caller-tag"))[1] == 1  # type: ignore[index]
        # The callee's tag alone never verifies, nor does a missing tag.
        assert verifier.verify(tok, "cid", ("callee-tag",)) is None
        assert verifier.verify(tok, "cid", (None,)) is None
        assert verifier.verify(tok, "cid", (None, "caller-tag"))[1] == 1  # type: ignore[index]


def test_eviction_is_oldest_first_and_forgets_nothing_it_should_check() -> None:
    t = RouteToken(b"k", minted_max=3)
    toks = [t.mint(f"c{i}", "f", f"r{i}", i, "t") for i in range(5)]
    assert list(t._minted) == toks[2:]  # the two oldest went first
    for i, tok in enumerate(toks):  # remembered or not, each verifies for its own dialog only
        res = t.verify(tok, f"c{i}", ("f",))
        assert res is not None and res[0].record_id == f"r{i}" and res[0].hop == i
        assert t.verify(tok, f"c{(i + 1) % 5}", ("f",)) is None
        assert t.verify(tok, f"c{i}", ("g",)) is None
    assert len(t._minted) == 3  # verifying does not grow the memory


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        RouteToken(b"")
