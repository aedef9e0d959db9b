"""Percentiles from samples and from Prometheus histograms, and per-process counters from /proc.

System-wide CPU figures are unreliable in the VMs the project runs on
(docs/performance.md, reference figures), so CPU and memory are read per process from /proc; UDP
receive-buffer drops, the first sign of overload, are read from
/proc/net/udp for the ports of the processes under test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


def pkey(p: float) -> str:
    """``50.0`` → ``"p50"``, ``99.9`` → ``"p99.9"``: the JSON keys of the report."""
    return f"p{p:g}"


def percentiles(values: Iterable[float], ps: Sequence[float] = PERCENTILES) -> dict[str, float | int]:
    """Percentiles by linear interpolation between order statistics (numpy's default method).

    Returns ``count`` too; an empty input gives only ``count: 0`` so a report
    never shows a made-up latency.
    """
    xs = sorted(values)
    out: dict[str, float | int] = {"count": len(xs)}
    if not xs:
        return out
    for p in ps:
        rank = (len(xs) - 1) * p / 100.0
        lo = math.floor(rank)
        hi = min(lo + 1, len(xs) - 1)
        out[pkey(p)] = xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)
    out["mean"] = sum(xs) / len(xs)
    out["max"] = xs[-1]
    return out


def histogram_percentiles(
    buckets: Mapping[float, float], total_sum: float | None = None, ps: Sequence[float] = PERCENTILES
) -> dict[str, float | int]:
    """Percentiles from cumulative Prometheus buckets ``{le: count}`` (``inf`` included).

    Linear interpolation inside the bucket, as PromQL's histogram_quantile:
    the resolution is the bucket width (0.1 ms at the bottom of the gateway's
    histogram), good for "where does the decision time sit", not for tails
    finer than the buckets. A percentile in the ``+Inf`` bucket is reported as
    the last finite bound.
    """
    bounds = sorted(buckets)
    count = buckets.get(math.inf, buckets[bounds[-1]] if bounds else 0.0)
    out: dict[str, float | int] = {"count": int(count)}
    if count <= 0:
        return out
    for p in ps:
        target = count * p / 100.0
        prev_bound, prev_count = 0.0, 0.0
        value = bounds[-1]
        for b in bounds:
            c = buckets[b]
            if c >= target:
                if math.isinf(b):
                    value = prev_bound
                else:
                    frac = 0.0 if c == prev_count else (target - prev_count) / (c - prev_count)
                    value = prev_bound + (b - prev_bound) * frac
                break
            prev_bound, prev_count = b, c
        out[pkey(p)] = value
    if total_sum is not None:
        out["mean"] = total_sum / count
    return out


# ------------------------------------------------------------------ /proc
_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TCK  # utime, stime (fields 14, 15 of stat)


def memory_kib(pid: int) -> dict[str, int]:
    """``rss`` and ``peak`` (VmHWM: the high-water mark since the process started), KiB."""
    out = {"rss": 0, "peak": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                out["peak"] = int(line.split()[1])
    except OSError:
        pass
    return out


def udp_bound(port: int) -> bool:
    """Some socket is bound to UDP ``port`` (IPv4 or IPv6): a proxy under test is listening."""
    want = f":{port:04X} "
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(want in line.split(None, 3)[1] + " " for line in lines if len(line.split()) > 2):
            return True
    return False


def group_pids(pgid: int) -> list[int]:
    """Every process in process group ``pgid`` (a proxy started in its own session, with its children)."""
    out: list[int] = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[2]) == pgid:  # field 5: pgrp
            out.append(int(d.name))
    return sorted(out)


def udp_drops(ports: Iterable[int]) -> int:
    """Datagrams the kernel dropped on the UDP sockets bound to ``ports`` (full receive buffers)."""
    want = set(ports)
    total = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 13:
                continue
            port = int(parts[1].rsplit(":", 1)[1], 16)
            if port in want:
                total += int(parts[-1])
    return total
