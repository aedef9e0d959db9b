"""Issue 14: consent/DNC loads as generations, operator state that survives reloads, bad input.

Real redis-server (and the real Cluster for the generation switch there);
``cag policy load`` run in-process through ``gateway.cli.main``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from gateway.cli import main
from policy.bulk import BATCH_ROWS
from policy.layout import GC_QUEUE, GEN_POINTER, callee_tag
from policy.store import PolicyStore
from tests.integration.conftest import cluster_flush

pytestmark = pytest.mark.integration

T = TypeVar("T")
CAG = str(Path(sys.executable).with_name("cag"))
CONSENTS = "token,callee,enterprise_id,purpose,granted_at,expires_at,max_calls,evidence_ref\n"
TRUNKS = "trunk_id,enterprise_id,sources,max_cps,status\nT1,E1,10.0.0.1,0,active\nT2,E1,10.0.0.2,5,active\n"
ENTS = "enterprise_id,name,status\nE1,One,active\nE2,Two,active\n"


def cag(*argv: str) -> int:
    return main(list(argv))


def with_store(url: str, fn: Callable[[PolicyStore], Awaitable[T]]) -> T:
    async def run() -> T:
        s = await PolicyStore.connect(url)
        try:
            return await fn(s)
        finally:
            await s.close()

    return asyncio.run(run())


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def dnc_file(tmp_path: Path, name: str, numbers: list[str], extra: str = "") -> Path:
    return write(tmp_path, name, "number,scope\n" + "".join(f"{n},all\n" for n in numbers) + extra)


def raw(url: str) -> redis.Redis:
    return redis.Redis(unix_socket_path=url.removeprefix("unix://"))


def gen_keys(url: str, gen: int) -> list[bytes]:
    """Every key a consent/DNC generation owns (buckets, token shards, bucket index)."""
    r = raw(url)
    try:
        return [k for k in r.scan_iter(count=1000) if k.endswith(f":{gen}".encode())
                or f":{gen}:".encode() in k]
    finally:
        r.close()


def layers(url: str, kind: str) -> list[int]:
    r = raw(url)
    try:
        v = r.hget(GEN_POINTER, kind)
        return [int(x) for x in bytes(v).decode().split(",")] if v else []  # type: ignore[arg-type]
    finally:
        r.close()


# ------------------------------------------------------------------ generations


def test_replace_switches_generation_and_deletes_the_old(redis_url: str, tmp_path: Path) -> None:
    a = dnc_file(tmp_path, "a.csv", [f"+861380013{i:04d}" for i in range(300)])
    assert cag("policy", "load", "dnc", str(a), "--redis-url", redis_url) == 0
    (g1,) = layers(redis_url, "dnc")
    assert gen_keys(redis_url, g1)
    b = dnc_file(tmp_path, "b.csv", ["+8613900139000"])
    assert cag("policy", "load", "dnc", str(b), "--replace", "--gc-grace", "0", "--redis-url", redis_url) == 0
    (g2,) = layers(redis_url, "dnc")
    assert g2 != g1
    assert gen_keys(redis_url, g1) == []  # deleted after the switch
    got = with_store(redis_url, lambda s: asyncio.gather(s.get_dnc("+8613800130000"), s.get_dnc("+8613900139000")))
    assert got[0] is None and got[1] is not None


def test_bad_row_late_in_a_big_file_leaves_everything_as_it_was(redis_url: str, tmp_path: Path) -> None:
    good = dnc_file(tmp_path, "good.csv", ["+8613700137000"])
    assert cag("policy", "load", "dnc", str(good), "--redis-url", redis_url) == 0
    before = layers(redis_url, "dnc")
    n = BATCH_ROWS * 3  # several pipelines are written before the bad row is read
    bad = dnc_file(tmp_path, "bad.csv", [f"+86138{i:08d}" for i in range(n)], extra="not-a-number,all\n")
    for mode in ((), ("--replace",)):
        assert cag("policy", "load", "dnc", str(bad), *mode, "--redis-url", redis_url) == 1
        assert layers(redis_url, "dnc") == before  # nothing switched
        assert with_store(redis_url, lambda s: s.get_dnc("+8613800000001")) is None
        assert with_store(redis_url, lambda s: s.get_dnc("+8613700137000")) is not None
    # The partial generations are queued for deletion at once, and `policy gc` removes them.
    assert cag("policy", "gc", "--redis-url", redis_url) == 0
    r = raw(redis_url)
    try:
        assert r.zcard(GC_QUEUE) == 0
        assert not [k for k in r.scan_iter(match="{c:*}:dnc:*")
                    if int(k.rsplit(b":", 1)[1]) not in before]
        assert not [k for k in r.scan_iter(match="{g:dnc:*") if int(k.split(b":")[2]) not in before]
    finally:
        r.close()


def test_duplicates_across_batches_are_named_with_both_lines(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    numbers = [f"+86138{i:08d}" for i in range(BATCH_ROWS * 2)]
    numbers.append(numbers[5])  # line 7 again, thousands of lines later
    p = dnc_file(tmp_path, "dup.csv", numbers)
    capsys.readouterr()
    assert cag("policy", "load", "dnc", str(p), "--redis-url", redis_url) == 1
    _, err = capsys.readouterr()
    assert f"{p}:{len(numbers) + 1}: duplicate number '+8613800000005' (first on line 7)" in err.splitlines()
    assert layers(redis_url, "dnc") == []
    tokens = write(tmp_path, "c.csv", CONSENTS + "".join(
        f"t{i % (BATCH_ROWS + 1)},+86139{i:08d},E1,,2026-01-01T00:00:00Z,,,\n" for i in range(BATCH_ROWS + 2)
    ))
    assert cag("policy", "load", "consents", str(tokens), "--redis-url", redis_url) == 1
    _, err = capsys.readouterr()
    assert f"{tokens}:{BATCH_ROWS + 3}: duplicate token 't0' (first on line 2)" in err.splitlines()


def test_upsert_overlay_then_replace(redis_url: str, tmp_path: Path) -> None:
    base = write(tmp_path, "base.csv", CONSENTS + "a,+8613800138000,E1,,2026-01-01T00:00:00Z,,,\n"
                 "b,+8613800138001,E1,,2026-01-01T00:00:00Z,,,\n")
    assert cag("policy", "load", "consents", str(base), "--redis-url", redis_url) == 0
    up1 = write(tmp_path, "up1.csv", CONSENTS + "b,+8613900139000,E1,consultation,2026-01-01T00:00:00Z,,,\n")
    assert cag("policy", "load", "consents", str(up1), "--redis-url", redis_url) == 0
    assert len(layers(redis_url, "consents")) == 2
    up2 = write(tmp_path, "up2.csv", CONSENTS + "c,+8613700137000,E1,,2026-01-01T00:00:00Z,,,\n")
    assert cag("policy", "load", "consents", str(up2), "--gc-grace", "0", "--redis-url", redis_url) == 0
    assert len(layers(redis_url, "consents")) == 2  # the first overlay merged into the second

    async def check(s: PolicyStore) -> list[Any]:
        return [await s.get_consent(t) for t in "abc"] + [await s.consents_for("+8613800138001")]

    a, b, c, at_old_callee = with_store(redis_url, check)
    assert a is not None and c is not None
    assert b is not None and b.callee == "+8613900139000" and b.purpose == "consultation"
    assert at_old_callee == []  # the moved token is hidden at its old callee (tombstone)
    assert cag("policy", "load", "consents", str(up2), "--replace", "--gc-grace", "0", "--redis-url", redis_url) == 0
    assert len(layers(redis_url, "consents")) == 1
    a, b, c, _ = with_store(redis_url, check)
    assert a is None and b is None and c is not None


def test_empty_replace_refused_unless_allowed(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cag("policy", "load", "dnc", str(dnc_file(tmp_path, "d.csv", ["+8613800138000"])), "--redis-url", redis_url) == 0
    empty = write(tmp_path, "empty.csv", "number,scope\n")
    capsys.readouterr()
    assert cag("policy", "load", "dnc", str(empty), "--replace", "--redis-url", redis_url) == 1
    _, err = capsys.readouterr()
    assert "--allow-empty" in err
    assert with_store(redis_url, lambda s: s.get_dnc("+8613800138000")) is not None
    assert cag("policy", "load", "dnc", str(empty), "--replace", "--allow-empty", "--gc-grace", "0",
               "--redis-url", redis_url) == 0
    assert with_store(redis_url, lambda s: s.get_dnc("+8613800138000")) is None


# ------------------------------------------------------------------ operator state


def test_reloads_do_not_undo_operator_state(redis_url: str, tmp_path: Path) -> None:
    c = write(tmp_path, "c.csv", CONSENTS + "a,+8613800138000,E1,,2026-01-01T00:00:00Z,,5,\n")
    t = write(tmp_path, "t.csv", TRUNKS)
    e = write(tmp_path, "e.csv", ENTS)
    for kind, f in (("consents", c), ("trunks", t), ("enterprises", e)):
        assert cag("policy", "load", kind, str(f), "--redis-url", redis_url) == 0
    assert cag("policy", "consent", "revoke", "a", "--at", "2026-02-01T00:00:00Z", "--redis-url", redis_url) == 0
    assert with_store(redis_url, lambda s: s.set_consent_used("a", 3))
    assert cag("policy", "suspend", "trunk", "T1", "--redis-url", redis_url) == 0
    assert cag("policy", "suspend", "enterprise", "E1", "--cause", "complaints", "--redis-url", redis_url) == 0

    async def automatic(s: PolicyStore) -> bool:  # what the engine does on R6 (unconsented attempts)
        return await s.set_status("enterprise", "E2", "suspended", cause="unconsented", at=datetime.now(UTC))

    assert with_store(redis_url, automatic)
    for mode in ((), ("--replace", "--gc-grace", "0")):
        for kind, f in (("consents", c), ("trunks", t), ("enterprises", e)):
            assert cag("policy", "load", kind, str(f), *mode, "--redis-url", redis_url) == 0

        async def state(s: PolicyStore) -> Any:
            trunks, ents, _, _ = await s.load_refdata()
            return (
                await s.get_consent("a"),
                await s.consent_used("a"),
                {x.trunk_id: x.status for x in trunks},
                {x.enterprise_id: (x.status, x.suspended_cause) for x in ents},
            )

        consent, used, trunks, ents = with_store(redis_url, state)
        assert consent is not None and consent.revoked_at == datetime(2026, 2, 1, tzinfo=UTC), mode
        assert used == 3, mode
        assert trunks == {"T1": "suspended", "T2": "active"}, mode
        assert ents == {"E1": ("suspended", "complaints"), "E2": ("suspended", "unconsented")}, mode
    assert cag("policy", "resume", "trunk", "T1", "--redis-url", redis_url) == 0
    assert cag("policy", "load", "trunks", str(t), "--redis-url", redis_url) == 0
    trunks, *_ = with_store(redis_url, lambda s: s.load_refdata())
    assert {x.trunk_id: x.status for x in trunks} == {"T1": "active", "T2": "active"}


def test_suspension_is_effective_through_get_ref(redis_url: str, tmp_path: Path) -> None:
    assert cag("policy", "load", "trunks", str(write(tmp_path, "t.csv", TRUNKS)), "--redis-url", redis_url) == 0
    assert cag("policy", "suspend", "trunk", "T2", "--redis-url", redis_url) == 0
    rec = with_store(redis_url, lambda s: s.get_ref("trunks", "T2"))
    assert rec is not None and rec.status == "suspended"  # type: ignore[attr-defined]


# ------------------------------------------------------------------ input as enterprises send it


def test_gbk_and_utf16_files(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "enterprise_id,name\nE9,北京某某科技有限公司\n"
    capsys.readouterr()
    gbk = write(tmp_path, "gbk.csv", text, "gbk")
    assert cag("policy", "load", "enterprises", str(gbk), "--redis-url", redis_url) == 0
    _, err = capsys.readouterr()
    assert "GB18030" in err and "--encoding" in err
    u16 = write(tmp_path, "u16.csv", text.replace("E9", "E8"), "utf-16")
    assert cag("policy", "load", "enterprises", str(u16), "--redis-url", redis_url) == 0
    ents = {x.enterprise_id: x.name for x in with_store(redis_url, lambda s: s.load_refdata())[1]}
    assert ents == {"E9": "北京某某科技有限公司", "E8": "北京某某科技有限公司"}
    # Forced the wrong way: every line named, nothing loaded.
    assert cag("policy", "load", "enterprises", str(gbk), "--encoding", "utf-8", "--redis-url", redis_url) == 1
    _, err = capsys.readouterr()
    assert f"{gbk}:2: not valid UTF-8" in err and "--encoding gb18030" in err
    assert cag("policy", "load", "enterprises", str(gbk), "--encoding", "klingon", "--redis-url", redis_url) == 1


def test_times_without_offset_use_the_zone(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = write(tmp_path, "c.csv", CONSENTS + "a,13800138000,E1,,2026-12-07 09:00,20261231,,\n")
    assert cag("policy", "load", "consents", str(c), "--redis-url", redis_url) == 0  # default Asia/Shanghai
    got = with_store(redis_url, lambda s: s.get_consent("a"))
    assert got is not None and got.granted_at == datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
    assert got.expires_at == datetime(2026, 12, 30, 16, 0, tzinfo=UTC)  # 20261231 local midnight
    assert cag("policy", "load", "consents", str(c), "--tz", "UTC", "--redis-url", redis_url) == 0
    got = with_store(redis_url, lambda s: s.get_consent("a"))
    assert got is not None and got.granted_at == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    capsys.readouterr()
    assert cag("policy", "load", "consents", str(c), "--tz", "none", "--redis-url", redis_url) == 1
    _, err = capsys.readouterr()
    assert f"{c}:2: granted_at: '2026-12-07 09:00' has no UTC offset" in err


def test_excel_numbers(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = write(tmp_path, "ok.csv", "number,scope\n13800138000.0,all\n1.3800138001E+10,all\n")
    assert cag("policy", "load", "dnc", str(ok), "--redis-url", redis_url) == 0
    assert with_store(redis_url, lambda s: s.get_dnc("+8613800138001")) is not None
    bad = write(tmp_path, "bad.csv", "number,scope\n1.38001E+10,all\n")
    capsys.readouterr()
    assert cag("policy", "load", "dnc", str(bad), "--redis-url", redis_url) == 1
    _, err = capsys.readouterr()
    assert f"{bad}:2: number: '1.38001E+10' is Excel scientific notation with only 6 of 11 digits left" in err


# ------------------------------------------------------------------ loads never disturb calls


# Runs argv[1:] and prints its peak RSS (KiB) as the last line of stderr.
_PEAK_RSS = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def test_no_long_command_and_bounded_loader_memory(redis_url: str, tmp_path: Path) -> None:
    """300,000 DNC numbers: every command a load sends is bounded (no whole-file MULTI, no key
    holding the kind), none runs long, and the loader's RSS stays far below 200 MiB.

    SLOWLOG records wall time, so on a shared CI box a small command preempted by the
    scheduler can pass 5 ms; what must never appear is a big one (arguments beyond a batch)
    or anything near the seconds the old one-MULTI load blocked Redis for.
    """
    n = 300_000
    p = tmp_path / "big.csv"
    with open(p, "w") as f:
        f.write("number,scope,registered_at\n")
        f.writelines(f"+86{13_000_000_000 + i * 16},all,2025-03-15T10:00:00+08:00\n" for i in range(n))
    r = raw(redis_url)
    try:
        r.config_set("slowlog-log-slower-than", 5000)
        r.config_set("slowlog-max-len", 1024)
        r.slowlog_reset()
        # The loader's own peak: RUSAGE_CHILDREN of this pytest process would be the
        # largest child any earlier test waited for (a gateway, a redis-server...).
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, CAG, "policy", "load", "dnc", str(p),
                               "--redis-url", redis_url], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        rss_mib = int(proc.stderr.strip().splitlines()[-1]) / 1024
        slow = [(e["duration"], e["command"]) for e in r.slowlog_get(1024)]
        r.config_set("slowlog-log-slower-than", 10000)
        sizes = [r.hlen(k) for k in r.scan_iter(match="{c:*}:dnc:*", count=1000)]
    finally:
        r.close()
    assert all(us < 50_000 for us, _ in slow), slow
    assert all(_argc(cmd) <= 2 + 2 * BATCH_ROWS for _, cmd in slow), slow
    assert max(sizes) <= 1000 and len(sizes) >= n * 16 // 1000, (max(sizes), len(sizes))  # small buckets
    assert rss_mib < 200, rss_mib


def _argc(cmd: bytes) -> int:
    """Arguments of a SLOWLOG entry (Redis keeps 32 and says "... (N more arguments)")."""
    m = re.search(rb"\(([0-9]+) more arguments\)", cmd)
    return len(cmd.split()) + (int(m.group(1)) if m else 0)


# ------------------------------------------------------------------ cluster


def test_generation_switch_on_cluster(redis_cluster: str, tmp_path: Path) -> None:
    cluster_flush(redis_cluster)
    numbers = [f"+86138{i:08d}" for i in range(5000)]
    assert cag("policy", "load", "dnc", str(dnc_file(tmp_path, "d.csv", numbers)), "--redis-url", redis_cluster) == 0
    bad = dnc_file(tmp_path, "bad.csv", ["+8613900139000"] * 1 + ["+8613900139001"], extra="junk,all\n")
    assert cag("policy", "load", "dnc", str(bad), "--replace", "--redis-url", redis_cluster) == 1
    c = write(tmp_path, "c.csv", CONSENTS + "a,+8613800000007,E1,,2026-01-01T00:00:00Z,,,\n")
    assert cag("policy", "load", "consents", str(c), "--redis-url", redis_cluster) == 0

    async def check(s: PolicyStore) -> Any:
        assert s.cluster
        return (await s.get_dnc("+8613800004999"), await s.get_dnc("+8613900139000"),
                await s.get_consent("a"), await s.token_callee("a"))

    in_old, in_bad, consent, owner = with_store(redis_cluster, check)
    assert in_old is not None and in_bad is None and consent is not None and owner == "+8613800000007"
    assert callee_tag("+8613800000007") == "{c:+8613800000}007"
    good = dnc_file(tmp_path, "g.csv", ["+8613900139000"])
    assert cag("policy", "load", "dnc", str(good), "--replace", "--gc-grace", "0", "--redis-url", redis_cluster) == 0
    in_old, in_new, *_ = with_store(redis_cluster, check)
    assert in_old is None and in_new is not None


def test_export_round_trips_through_load(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    numbers = [f"+86138{i * 7:08d}" for i in range(3000)]
    assert cag("policy", "load", "dnc", str(dnc_file(tmp_path, "d.csv", numbers)), "--redis-url", redis_url) == 0
    assert cag("policy", "load", "dnc", str(dnc_file(tmp_path, "o.csv", ["+8613900139000"])), "--redis-url", redis_url) == 0
    base = write(tmp_path, "c.csv", CONSENTS + "a,+8613800138000,E1,,2026-01-01T00:00:00Z,,,\n"
                 "b,+8613800138001,E1,,2026-01-01T00:00:00Z,,2,ev\n")
    moved = write(tmp_path, "m.csv", CONSENTS + "b,+8613700137000,E1,,2026-01-01T00:00:00Z,,2,ev\n")
    for f in (base, moved):
        assert cag("policy", "load", "consents", str(f), "--redis-url", redis_url) == 0
    assert cag("policy", "consent", "revoke", "a", "--at", "2026-02-01T00:00:00Z", "--redis-url", redis_url) == 0
    capsys.readouterr()
    assert cag("policy", "export", "dnc", "--redis-url", redis_url) == 0
    out, _ = capsys.readouterr()
    got = sorted(json.loads(line)["number"] for line in out.splitlines())
    assert got == sorted([*numbers, "+8613900139000"])
    assert cag("policy", "export", "consents", "--redis-url", redis_url) == 0
    out, _ = capsys.readouterr()
    rows = {d["token"]: d for d in map(json.loads, out.splitlines())}
    assert set(rows) == {"a", "b"} and rows["b"]["callee"] == "+8613700137000"  # the tombstone hid the old one
    assert rows["a"]["revoked_at"].startswith("2026-02-01") and rows["b"]["max_calls"] == 2
    exported = tmp_path / "export.jsonl"
    exported.write_text(out)
    assert cag("policy", "load", "consents", str(exported), "--replace", "--gc-grace", "0", "--redis-url", redis_url) == 0
    again = with_store(redis_url, lambda s: s.get_consent("b"))
    assert again is not None and again.callee == "+8613700137000"


async def test_switch_race_and_workers_follow_a_switch(redis_url: str, make_engine: Any) -> None:
    """Two loads of one kind: the later switch loses (nothing of it visible). A worker's engine
    follows a switch through the `layers` message, without a reference-version change."""
    from policy.bulk import LayerWriter, SwitchConflict
    from policy.model import DncEntry
    from policy.store import row_of
    from tests.integration.conftest import call

    s = await PolicyStore.connect(redis_url)
    other = await PolicyStore.connect(redis_url)
    try:
        e = await make_engine(on=s, refresh_interval_s=60.0)  # no poll: only the message can tell it
        assert (await e.admit(call(callee="13800138000"))).admit
        version = await s.ref_version()
        a = LayerWriter(other, "dnc", replace=True)
        b = LayerWriter(other, "dnc", replace=True)
        await a.begin()
        await b.begin()
        await b.add([row_of(DncEntry(number="+8613800138000"))])
        await b.finish()
        await b.commit(grace_s=0)
        await a.add([row_of(DncEntry(number="+8613900139000"))])
        await a.finish()
        with pytest.raises(SwitchConflict):
            await a.commit(grace_s=0)
        assert await other.get_dnc("+8613900139000") is None
        assert await other.ref_version() == version  # no full reference reload for a switch
        for _ in range(40):  # the engine's store re-reads the layers on the message
            d = await e.admit(call(callee="13800138000"))
            if d.reason == "callee_dnc":
                break
            await asyncio.sleep(0.05)
        assert d.reason == "callee_dnc"
    finally:
        await s.close()
        await other.close()
