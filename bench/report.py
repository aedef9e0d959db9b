"""The benchmark report: machine description, JSON file, PNG plots, results folder.

Figures only mean something next to the machine they came from, so every
report carries the CPU model, core count and the versions of everything in
the path (Python, uvloop, redis-py, hiredis, Redis, SIPp, tcpdump).
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def new_results_dir(kind: str, base: Path | None = None) -> Path:
    """``bench/results/<UTC timestamp>-<kind>/`` (git-ignored), created."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    d = (base or RESULTS) / f"{stamp}-{kind}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _version(cmd: Sequence[str], pattern: str) -> str | None:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else None


def _pkg(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        pass
    import os

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "uvloop": _pkg("uvloop"),
        "redis_py": _pkg("redis"),
        "hiredis": _pkg("hiredis"),
        "dpkt": _pkg("dpkt"),
        "redis_server": _version(["redis-server", "--version"], r"v=(\S+)"),
        "sipp": _version(["sipp", "-v"], r"SIPp (v[\d.]+)"),
        "tcpdump": _version(["tcpdump", "--version"], r"tcpdump version (\S+)"),
    }


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return path


def plot_sweep(out: Path, steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """``latency.png`` (percentiles vs rate, direct and gateway) and ``decisions.png``.

    matplotlib is a dev extra: without it the JSON is still complete and the
    plots are skipped (named in the report as missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []
    fig, ax = plt.subplots(figsize=(10, 5))
    styles = {"direct": "--", "gateway": "-"}
    for target in ("direct", "gateway"):
        rows = [s for s in steps if s["target"] == target and s["latency_ms"].get("count")]
        if not rows:
            continue
        rates = [s["rate"] for s in rows]
        for p, color in (("p50", "tab:blue"), ("p90", "tab:green"), ("p99", "tab:orange"), ("p99.9", "tab:red")):
            ax.plot(rates, [s["latency_ms"][p] for s in rows], styles[target], color=color, marker="o",
                    label=f"{target} {p}")
    ax.set_xlabel("offered calls/s")
    ax.set_ylabel("INVITE → final response (ms, loopback capture)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Latency percentiles vs rate (dashed: SIPp → SIPp, no proxy)")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    gw = [s for s in steps if s["target"] == "gateway"]
    reasons = sorted({r for s in gw for r in s.get("decisions", {})})
    if gw and reasons:
        fig, ax = plt.subplots(figsize=(10, 5))
        bottom = [0.0] * len(gw)
        labels = [str(s["rate"]) for s in gw]
        totals = [max(1.0, float(sum(s["decisions"].values()))) for s in gw]
        cmap = plt.get_cmap("tab20")
        for k, r in enumerate(reasons):
            vals = [100.0 * float(s["decisions"].get(r, 0)) / t for s, t in zip(gw, totals, strict=True)]
            ax.bar(labels, vals, bottom=bottom, label=r, color=cmap(k % 20))
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylim(0, 100)
        ax.set_xlabel("offered calls/s")
        ax.set_ylabel("% of the step's decisions (gateway metrics)")
        ax.set_title("Gateway decisions by reason")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(out / "decisions.png", dpi=110)
        plt.close(fig)
        written.append("decisions.png")
    return written


def plot_decisions(out: Path, decisions: Mapping[str, float], name: str = "decisions.png") -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if not decisions:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    items = sorted(decisions.items(), key=lambda kv: -kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xscale("symlog")
    ax.set_xlabel("calls")
    ax.set_title("Replay: decisions by reason")
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]
