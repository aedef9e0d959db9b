"""A worker's memory, written down every few seconds: the diagnostic behind issue 13's RSS target.

Off by default. ``CAG_MEMTRACE=PREFIX`` makes each worker append one JSON
line every ``CAG_MEMTRACE_S`` seconds (default 30) to
``PREFIX.w<index>.jsonl`` with:

- ``rss``: the kernel's view (``/proc/self/status``: VmRSS, RssAnon,
  RssFile, VmHWM, in KiB), so heap growth and mapped-file growth (the
  prometheus-client multiprocess files) are told apart;
- ``malloc``: glibc's ``mallinfo2`` (bytes in use, free inside the heap,
  mmapped) — free bytes that grow while "in use" stays flat is
  fragmentation, not a leak;
- ``pymalloc``: the object allocator's arenas (current, high-water mark,
  allocated and reclaimed in total) and ``sys.getallocatedblocks()`` —
  live Python objects;
- ``gc``: counts per generation, collections, uncollectable garbage;
- ``sizes``: the length and the allocated size (``sys.getsizeof``: a
  dict keeps its table after deletes) of every container of 64 items or
  more reachable in four attribute steps from the worker (core, engine,
  audit sink, readers...), by attribute path;
- ``cycles``: with ``CAG_MEMTRACE_GC=1``, a full collection at each
  sample: how many unreachable objects it found, what types they were,
  and how long it took (cyclic garbage that reached the oldest
  generation otherwise waits for a rare full collection);
- ``trim``: with ``CAG_MEMTRACE_TRIM=1``, glibc's ``malloc_trim(0)`` after
  each sample and the RSS it gave back (KiB, ms) — only the C heap, so
  it matters with ``PYTHONMALLOC=malloc``; pymalloc frees whole arenas;
- ``top``: with ``CAG_MEMTRACE_TOP=N``, tracemalloc's N lines that grew
  most since the previous sample (tracemalloc roughly halves the
  worker's speed: for diagnosis only).

Cost without tracemalloc or a collection: one 7-10 ms pause of the loop
per sample under load (the walk looks at attributes and lengths, never
into a container; most of it is ``sys._debugmallocstats``), so it may
stay on in a long benchmark but shows in its p99. Read the files with
``python -m gateway.memtrace PREFIX.w0.jsonl``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import re
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

ENV = "CAG_MEMTRACE"
MIN_LEN = 64  # containers shorter than this are not reported
DEPTH = 4

_STATUS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")


def rss_status(path: str = "/proc/self/status") -> dict[str, int]:
    """The kernel's memory figures for this process, KiB."""
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in _STATUS:
                    out[name] = int(rest.split()[0])
    except OSError:
        pass
    return out


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def mallinfo() -> dict[str, int]:
    """glibc's heap: ``arena`` (sbrk heap), ``hblkhd`` (mmapped), ``uordblks`` in use, ``fordblks`` free."""
    fn = getattr(_LIBC, "mallinfo2", None)
    if fn is None:
        return {}
    fn.restype = _Mallinfo2
    m = fn()
    return {k: int(getattr(m, k)) for k in ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")}


_ARENA_LINES = {
    "# arenas allocated total": "arenas_total",
    "# arenas reclaimed": "arenas_reclaimed",
    "# arenas highwater mark": "arenas_highwater",
    "# arenas allocated current": "arenas_current",
    "# bytes in allocated blocks": "bytes_in_blocks",
    "# bytes in available blocks": "bytes_free_in_pools",
    "# bytes in unused pools": "bytes_unused_pools",
}


def pymalloc_stats() -> dict[str, int]:
    """The arena lines of ``sys._debugmallocstats()`` (written by C to fd 2, so captured there)."""
    dump = getattr(sys, "_debugmallocstats", None)
    if dump is None:
        return {}
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            dump()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("ascii", "replace")
    out: dict[str, int] = {"blocks": sys.getallocatedblocks()}
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        key = _ARENA_LINES.get(name.strip())
        if key and eq:
            digits = re.sub(r"[^0-9]", "", value)
            if digits:
                out[key] = int(digits)
    return out


_SIZED = (dict, list, set, frozenset, deque)


def sizes(
    root: object, name: str = "worker", depth: int = DEPTH, min_len: int = MIN_LEN
) -> dict[str, list[int]]:
    """``path -> [len, bytes]`` of the large containers reachable in ``depth`` attribute steps.

    Follows instance attributes (``__dict__`` and ``__slots__``), never the
    items of a container, and visits each object once.
    """
    out: dict[str, list[int]] = {}
    seen: set[int] = set()
    todo: deque[tuple[str, object, int]] = deque([(name, root, 0)])
    while todo:  # breadth first: an object is reported under its shortest path
        path, obj, level = todo.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, _SIZED):
            if len(obj) >= min_len:
                out[path] = [len(obj), sys.getsizeof(obj)]
            continue
        if level >= depth or isinstance(obj, (str, bytes, int, float, bool, type(None), type)):
            continue
        for attr, value in _attrs(obj):
            todo.append((f"{path}.{attr}", value, level + 1))
    return out


def _attrs(obj: object) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        found.extend(d.items())
    for cls in type(obj).__mro__:
        # ``__mypyc_attrs__``: a compiled class's attributes (it has neither __dict__ nor __slots__).
        for slot in (*getattr(cls, "__slots__", ()), *cls.__dict__.get("__mypyc_attrs__", ())):
            if isinstance(slot, str) and slot not in ("__dict__", "__weakref__"):
                try:
                    found.append((slot, getattr(obj, slot)))
                except AttributeError:
                    continue
    return found


class MemTrace:
    """One worker's sampler: ``sample()`` every period, one JSON line each."""

    def __init__(
        self,
        path: str,
        root: object,
        *,
        top: int = 0,
        collect: bool = False,
        trim: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.trim = trim
        self.collect = collect
        self.root = root
        self.top = top
        self.clock = clock
        self._t0 = clock()
        self._snap: Any = None
        if top:
            import tracemalloc

            if not tracemalloc.is_tracing():
                tracemalloc.start(1)

    def sample(self) -> dict[str, Any]:
        t = time.process_time()
        rec: dict[str, Any] = {
            "t": round(self.clock() - self._t0, 1),
            "rss": rss_status(),
            "malloc": mallinfo(),
            "pymalloc": pymalloc_stats(),
            "gc": {
                "count": gc.get_count(),
                "collections": [s["collections"] for s in gc.get_stats()],
                "uncollectable": sum(s["uncollectable"] for s in gc.get_stats()),
                "garbage": len(gc.garbage),
                "frozen": gc.get_freeze_count(),
            },
            "sizes": sizes(self.root),
        }
        if self.collect:
            rec["cycles"] = cycles()
        if self.top:
            rec["top"] = self._top()
        if self.trim:
            rec["trim"] = malloc_trim()
        rec["cost_ms"] = round((time.process_time() - t) * 1000, 2)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        return rec

    def _top(self) -> list[str]:
        import tracemalloc

        snap = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),)
        )
        prev, self._snap = self._snap, snap
        if prev is None:
            stats = snap.statistics("lineno")[: self.top]
            return [f"{s.size // 1024} KiB {s.count} blocks {s.traceback}" for s in stats]
        diff = snap.compare_to(prev, "lineno")[: self.top]
        return [
            f"{d.size_diff // 1024:+} KiB {d.count_diff:+} blocks ({d.size // 1024} KiB) {d.traceback}"
            for d in diff
        ]


def malloc_trim() -> dict[str, float]:
    """glibc's ``malloc_trim(0)``: free pages inside the heap go back to the kernel; what RSS dropped."""
    fn = getattr(_LIBC, "malloc_trim", None)
    if fn is None:
        return {}
    before = rss_status().get("VmRSS", 0)
    t = time.perf_counter()
    fn(0)
    ms = (time.perf_counter() - t) * 1000
    return {"freed_kib": before - rss_status().get("VmRSS", 0), "ms": round(ms, 1)}


def cycles(top: int = 12) -> dict[str, Any]:
    """A full collection now, keeping what it finds just long enough to count it by type."""
    from collections import Counter

    t = time.perf_counter()
    old = gc.get_debug()
    gc.set_debug(old | gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(old)
    gc.collect()  # SAVEALL kept them alive: free them now, or every sample would find them again
    return {
        "found": found,
        "ms": round((time.perf_counter() - t) * 1000, 1),
        "types": kinds.most_common(top),
    }


def from_env(index: int, root: object) -> tuple[MemTrace, float] | None:
    """The worker's sampler and its period when ``CAG_MEMTRACE`` is set, else None."""
    prefix = os.environ.get(ENV)
    if not prefix:
        return None
    period = float(os.environ.get(ENV + "_S", "30"))
    top = int(os.environ.get(ENV + "_TOP", "0"))
    collect = os.environ.get(ENV + "_GC", "") not in ("", "0")
    trim = os.environ.get(ENV + "_TRIM", "") not in ("", "0")
    return MemTrace(f"{prefix}.w{index}.jsonl", root, top=top, collect=collect, trim=trim), period


def _show(path: str) -> None:
    """A table of a trace file: RSS, heap, arenas, and the containers that changed most."""
    rows = [json.loads(line) for line in open(path)]
    print(
        f"{'t':>6} {'rss':>7} {'anon':>7} {'file':>6} {'inuse':>7} {'free':>7} {'arenas':>6} {'hwm':>5} {'blocks':>9}"
    )
    for r in rows:
        rss, m, p = r["rss"], r.get("malloc", {}), r.get("pymalloc", {})
        print(
            f"{r['t']:>6} {rss.get('VmRSS', 0) // 1024:>6}M {rss.get('RssAnon', 0) // 1024:>6}M "
            f"{rss.get('RssFile', 0) // 1024:>5}M {m.get('uordblks', 0) >> 20:>6}M {m.get('fordblks', 0) >> 20:>6}M "
            f"{p.get('arenas_current', 0):>6} {p.get('arenas_highwater', 0):>5} {p.get('blocks', 0):>9}"
        )
    if len(rows) >= 2:
        first, last = rows[0]["sizes"], rows[-1]["sizes"]
        keys = sorted(
            set(first) | set(last),
            key=lambda k: -(last.get(k, [0, 0])[1] - first.get(k, [0, 0])[1]),
        )
        print("containers (len, bytes) first -> last:")
        for k in keys[:25]:
            print(f"  {k}: {first.get(k)} -> {last.get(k)}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(p)
        _show(p)
