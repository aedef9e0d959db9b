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
