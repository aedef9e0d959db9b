"""Synthetic capture → read back: the same INVITEs, timing and outcomes (bench.pcap, bench.dataset)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dpkt
import pytest

from bench import dataset, pcap

SPEC = dataset.DatasetSpec(filed=1000, consents=10_000, dnc_extra=10)


def test_generated_capture_reads_back_to_the_same_invites(tmp_path: Path) -> None:
    calls = dataset.make_calls(300, dataset.DEFAULT_MIX, SPEC, seed=5)
    path = tmp_path / "calls.pcap"
    truth = pcap.write_synthetic(path, calls, cps=40.0, seed=5)
    invites = pcap.read_invites(path)
    assert len(invites) == len(calls) == len(truth)
    for inv, (ts, cid, call) in zip(invites, truth, strict=True):
        assert inv.call_id == cid
        assert inv.ts == pytest.approx(ts, abs=2e-6)  # pcap keeps microseconds
        assert (inv.caller, inv.callee, inv.token, inv.purpose) == (
            call.caller, call.callee, call.token, call.purpose)


def test_generated_capture_is_a_valid_classic_pcap(tmp_path: Path) -> None:
    path = tmp_path / "calls.pcap"
    pcap.write_synthetic(path, dataset.make_calls(20, dataset.DEFAULT_MIX, SPEC), cps=10.0)
    with open(path, "rb") as f:
        assert f.read(4) == b"\xd4\xc3\xb2\xa1"  # little-endian µs pcap, what tshark/tcpdump read
        f.seek(0)
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        frames = list(reader)
    assert frames and all(isinstance(dpkt.ethernet.Ethernet(b).data.data, dpkt.udp.UDP) for _, b in frames)
    assert [t for t, _ in frames] == sorted(t for t, _ in frames)


def test_latencies_pair_invites_with_their_final_response(tmp_path: Path) -> None:
    calls = dataset.make_calls(200, dataset.DEFAULT_MIX, SPEC, seed=2)
    path = tmp_path / "calls.pcap"
    pcap.write_synthetic(path, calls, cps=20.0, seed=2)
    answered, unanswered = pcap.latencies(path)
    assert unanswered == 0 and len(answered) == 200
    want = Counter("admitted" if c.family == "admit" else c.family for c in calls)
    assert Counter(a.reason for a in answered) == want
    assert all(a.latency_ms > 0 for a in answered)
    # Rejections come within milliseconds; admitted calls ring first (INVITE → 200).
    assert max(a.latency_ms for a in answered if a.status >= 300) < 5
    assert min(a.latency_ms for a in answered if a.status == 200) >= 500


def test_pcapng_is_read_too(tmp_path: Path) -> None:
    calls = dataset.make_calls(10, {"admit": 1.0}, SPEC)
    classic = tmp_path / "c.pcap"
    pcap.write_synthetic(classic, calls, cps=5.0)
    ng = tmp_path / "c.pcapng"
    with open(classic, "rb") as f, open(ng, "wb") as g:
        w = dpkt.pcapng.Writer(g, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, buf in dpkt.pcap.Reader(f):
            w.writepkt(buf, ts=ts)
    assert [i.call_id for i in pcap.read_invites(ng)] == [i.call_id for i in pcap.read_invites(classic)]


def test_sipp_injection_file_is_paced_by_the_given_rate(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text("SEQUENTIAL\n4001000001;+8613800000001;bt0000001;callback;admit;\n"
                    "4001000002;+8613800000002;;;consent_missing;\n")
    invites = pcap.read_inf(path, rate=4.0)
    assert [(i.ts, i.caller, i.token, i.purpose) for i in invites] == [
        (0.0, "4001000001", "bt0000001", "callback"), (0.25, "4001000002", "", "")]


def test_parse_head_reads_compact_forms_and_reason() -> None:
    msg = (b"SIP/2.0 608 Rejected\r\ni: abc\r\nCSeq: 1 INVITE\r\n"
           b'Reason: SIP;cause=608;text="callee_dnc"\r\n\r\n')
    head = pcap.parse_head(msg)
    assert head is not None and head.status == 608 and head.call_id == "abc"
    assert head.cseq_method == "INVITE" and pcap.reason_text(head) == "callee_dnc"
    assert pcap.parse_head(b"\x00\x01garbage") is None


def test_call_mix_is_exact_and_families_are_consistent() -> None:
    mix = dataset.parse_mix("admit=90,callee_dnc=5,consent_unknown=5")
    calls = dataset.make_calls(1000, mix, SPEC, seed=9)
    assert Counter(c.family for c in calls) == {"admit": 900, "callee_dnc": 50, "consent_unknown": 50}
    dnc = {e.number for e in dataset.dnc_entries(SPEC)}
    tokens = {dataset.consent_token(i) for i in range(SPEC.consents)}
    for c in calls:
        if c.family == "callee_dnc":
            assert c.callee in dnc and c.token in tokens
        elif c.family == "admit":
            assert c.callee not in dnc and c.token in tokens
        else:
            assert c.token not in tokens
    with pytest.raises(ValueError):
        dataset.parse_mix("admit=1,quiet=2")


def test_gen_pcap_command(tmp_path: Path) -> None:
    from bench.__main__ import main

    out = tmp_path / "g.pcap"
    assert main(["gen-pcap", str(out), "--calls", "25", "--cps", "10", "--consents", "1000", "--filed", "100"]) == 0
    assert len(pcap.read_invites(out)) == 25
