"""The worker's local append-only spool: audit entries kept while Redis cannot take them.

Frames are ``<u32 length><msgpack entry>``, appended and fsync'd per batch,
in numbered files under the worker's spool directory. Replay reads closed
files oldest first and deletes a file only once all its entries are in the
stream; a crash mid-replay re-sends entries, which the archiver and export
drop by record id. The spool is bounded (``max_bytes``): past the bound new
entries are refused and counted, with one log line per episode.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("cag.audit")

_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 20
FILE_BYTES = 8 * 1024 * 1024  # replay reads a whole file: keep them small


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._current: Path | None = None
        self._current_size = 0
        self.full = False
        self.dropped = 0
        self.bytes = sum(p.stat().st_size for p in self.files())

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("spool-*.bin"), key=lambda p: int(p.stem.split("-")[1]))

    def __bool__(self) -> bool:
        return self.bytes > 0

    def append(self, frames: list[bytes]) -> int:
        """Append and fsync; returns how many were refused because the spool is full."""
        data = bytearray()
        taken = 0
        for f in frames:
            if self.bytes + len(data) + _LEN.size + len(f) > self.max_bytes:
                break
            data += _LEN.pack(len(f)) + f
            taken += 1
        refused = len(frames) - taken
        if data:
            if self._fd is not None and self._current_size >= FILE_BYTES:
                self.close_current()
            if self._fd is None:
                files = self.files()
                seq = int(files[-1].stem.split("-")[1]) + 1 if files else 1
                self._current = self.dir / f"spool-{seq}.bin"
                self._fd = os.open(self._current, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(self._fd, bytes(data))
            os.fsync(self._fd)
            self.bytes += len(data)
            self._current_size += len(data)
        if refused:
            self.dropped += refused
            if not self.full:
                log.error(
                    "audit spool full (%d bytes in %s): audit entries are being dropped until Redis returns",
                    self.bytes, self.dir,
                )
            self.full = True
        return refused

    def close_current(self) -> None:
        """Stop appending to the current file, so replay may take it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._current = None
            self._current_size = 0

    def read(self, path: Path) -> Iterator[bytes]:
        """Frames of one file; a truncated tail (a kill mid-write) is logged and ignored."""
        data = path.read_bytes()
        off = 0
        while off + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, off)
            if n > MAX_FRAME or off + _LEN.size + n > len(data):
                break
            yield data[off + _LEN.size : off + _LEN.size + n]
            off += _LEN.size + n
        if off != len(data):
            log.warning("audit spool %s: %d trailing bytes of a torn frame ignored", path, len(data) - off)

    def remove(self, path: Path) -> None:
        size = path.stat().st_size
        path.unlink()
        self.bytes = max(0, self.bytes - size)
        if self.full and self.bytes < self.max_bytes // 2:
            log.info("audit spool below half full again; accepting entries")
            self.full = False
