"""Structured JSON log lines (or text lines on a terminal), written by a thread, and the rate-limited rejection line.

JSON is what a machine reads (journald, a shipper); a person at a terminal
gets one readable line per record (``log_format``: auto picks text when
stderr is a TTY, so ``scripts/demo.sh`` is not drowned in JSON).

Why a thread: a log line is a ``write()`` to stderr (a pipe to journald, a
file, a terminal) and any of them can block; on the INVITE path that would
be a stall for every call of the worker. Records go through a
``QueueHandler`` to a ``QueueListener`` thread that formats and writes them.
The listener is per process: a thread does not survive ``fork()``, so each
worker calls ``setup()`` again after it starts.

Why a rate limit: one JSON line per rejection at info level is what a NOC
engineer greps for ("why was my call blocked?"), but a flood of rejected
INVITEs must not fill a disk. ``RejectLog`` lets ``per_second`` lines
through per second and then counts; the next second's first line is
preceded by one line with the count suppressed.

Numbers in log lines can be masked (``log_keep_digits``): only the last N
digits stay, the rest become ``*`` — the audit trail keeps the full numbers
for those entitled to them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policy.decision import Decision

_listener: logging.handlers.QueueListener | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"fields": {...}}`` adds keys to it."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # ensure_ascii: a header value with control or non-ASCII bytes cannot break the line
        return json.dumps(out, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """One line for a person: ``12:00:01 INFO  policy.engine: message key=value …``."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{t} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        # Control characters from a header value must not rewrite the terminal.
        return "".join(c if c.isprintable() or c == "\n" else "?" for c in line)


def formatter_for(fmt: str | None = None, stream: Any = None) -> logging.Formatter:
    """``json`` / ``text`` / ``auto`` (text when the stream is a terminal); default $CAG_LOG_FORMAT or auto."""
    fmt = (fmt or os.environ.get("CAG_LOG_FORMAT") or "auto").lower()
    if fmt == "auto":
        target = stream if stream is not None else sys.stderr
        try:
            fmt = "text" if target.isatty() else "json"
        except (AttributeError, ValueError):  # closed or not a file
            fmt = "json"
    return TextFormatter() if fmt == "text" else JsonFormatter()


def setup(level: str, *, threaded: bool = True, fmt: str | None = None) -> None:
    """Install the log handler on the root logger (again after a fork: see the module doc).

    ``fmt``: json (machines: journald, a log shipper), text (a person at a
    terminal), auto (text when stderr is a terminal); default the
    ``log_format`` setting, which reaches every process as $CAG_LOG_FORMAT.
    """
    global _listener
    if _listener is not None:
        try:
            _listener.stop()
        except Exception:  # a listener inherited through fork has no thread to join
            pass
        _listener = None
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter_for(fmt, sys.stderr))
    root = logging.getLogger()
    if threaded:
        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        _listener = logging.handlers.QueueListener(q, stream, respect_handler_level=False)
        _listener.start()
        root.handlers[:] = [logging.handlers.QueueHandler(q)]
    else:
        root.handlers[:] = [stream]
    root.setLevel(level.upper())


def shutdown() -> None:
    """Flush the listener's queue (worker exit)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def mask(number: str | None, keep: int) -> str | None:
    """``+8613812345678`` with keep=4 → ``+*********5678``; keep < 0 leaves it whole."""
    if number is None or keep < 0:
        return number
    digits = sum(c.isdigit() for c in number)
    hide = max(digits - keep, 0)
    out = []
    for c in number:
        if c.isdigit() and hide > 0:
            out.append("*")
            hide -= 1
        else:
            out.append(c)
    return "".join(out)


class RejectLog:
    """The one info line per rejection, at most ``per_second`` a second (0 = no limit).

    Cheap per call (issue 13): a suppressed rejection is two integer
    compares; a written one builds one ``LogRecord`` and puts it straight on
    the listener's queue — no ``Logger`` dispatch and no ``QueueHandler``
    copy-and-format in the worker's thread: the listener thread formats the
    JSON line. Without the threaded set-up (tests, ``threaded=False``) the
    record goes through the logger's handlers as usual.
    """

    def __init__(self, logger: logging.Logger, per_second: int, keep_digits: int) -> None:
        self.log = logger
        self.per_second = per_second
        self.keep = keep_digits
        self._second = 0
        self._count = 0
        self.suppressed = 0  # since the last summary line
        self.suppressed_total = 0

    def reject(self, d: Decision, record_id: str, now: float) -> bool:
        """Log it (True) or count it as suppressed (False)."""
        sec = int(now)
        if sec != self._second:
            self._second, self._count = sec, 0
            if self.suppressed:
                self.log.warning("rejection lines suppressed by the rate limit",
                                 extra={"fields": {"suppressed": self.suppressed}})
                self.suppressed = 0
        if self.per_second and self._count >= self.per_second:
            self.suppressed += 1
            self.suppressed_total += 1
            return False
        self._count += 1
        log = self.log
        if not log.isEnabledFor(logging.INFO):
            return True
        keep = self.keep
        record = log.makeRecord(log.name, logging.INFO, "(reject)", 0, "reject", (), None, extra={"fields": {
            "reason": d.reason, "sip_code": d.sip_code, "trunk": d.trunk_id, "enterprise": d.enterprise_id,
            "caller": mask(d.caller, keep) if keep >= 0 else d.caller,
            "callee": mask(d.callee, keep) if keep >= 0 else d.callee, "record": record_id,
        }})
        q = _listener_queue(log)
        if q is not None:
            q.put_nowait(record)
        else:
            log.handle(record)
        return True


def _listener_queue(log: logging.Logger) -> Any:
    """The listener thread's queue when ``log``'s records would reach only it (``setup``).

    Anything else on the way (a handler or filter of the logger's own, a
    parent's filter or handler level) returns None: the record then takes
    the ordinary ``Logger.handle`` route.
    """
    if _listener is None or log.handlers or log.filters or not log.propagate:
        return None
    lg = log.parent
    while lg is not None:
        if lg.filters:
            return None
        if lg.handlers:
            h = lg.handlers[0]
            ok = (
                len(lg.handlers) == 1
                and isinstance(h, logging.handlers.QueueHandler)
                and not h.filters
                and h.level <= logging.INFO
                and h.queue is _listener.queue
            )
            return h.queue if ok and isinstance(h, logging.handlers.QueueHandler) else None
        if not lg.propagate:
            return None
        lg = lg.parent
    return None
