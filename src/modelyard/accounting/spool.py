"""The spend spool: append-only local files that hold spend records until the store has acknowledged them.

Why: the store writer batches records for up to a flush interval, so a process killed with -9 used to lose
about one interval of completed requests' spend. The spool closes that gap cheaply. The request path
appends its record's line to an in-memory buffer; the whole buffer of one event-loop tick goes to the
kernel in ONE `os.write()` before any of those responses' last bytes are sent. Once the write returns, a
process crash cannot lose the records (the page cache belongs to the kernel); `fsync` runs off the event
loop once per flush interval and bounds what a power loss can lose.

Layout of a spool directory (several processes may share one: `--workers N`, or replicas on one host):

    <owner>.lock               held with flock(LOCK_EX) by the live process that owns <owner>
    <owner>.<seq>.spool        that owner's segments: one JSON spend record per line

A segment is rotated once it reaches `segment_bytes`; a sealed segment is deleted as soon as the store has
acknowledged every record in it, and a clean shutdown deletes everything acknowledged. A process that
starts adopts the segments of every owner whose lock nobody holds (a crashed process): it renames them into
its own name (atomic; two starters cannot both adopt one) and hands their lines back for replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("modelyard.spend")

SEGMENT_BYTES = 16 * 1024 * 1024
_SUFFIX = ".spool"
_LOCK = ".lock"


@dataclass(slots=True, eq=False)
class Segment:
    """One spool file and how many of its records the store has not acknowledged yet."""

    path: Path
    fd: int | None = None  # open for appending while active (and until its last fsync)
    size: int = 0
    outstanding: int = 0  # records written here, not yet acknowledged by the store
    sealed: bool = False  # no more appends: deleted once `outstanding` reaches zero
    dirty: bool = False  # written since its last fsync
    deleted: bool = field(default=False)


class Spool:
    """The spool directory of one process: its lock, its segments, and the adoption of orphans."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.segment_bytes = max(4096, segment_bytes)
        self.owner = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.active: Segment | None = None
        self.segments: list[Segment] = []
        self._lock_fd: int | None = None
        self._seq = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> list[tuple[Segment, list[bytes]]]:
        """Take our lock, adopt what crashed owners left (returned as segments with their lines), open a segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_path = self.directory / f"{self.owner}{_LOCK}"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        adopted = list(self._adopt())
        self._rotate()
        return adopted

    def close(self) -> None:
        """Sync and close every file; delete what the store acknowledged; keep the rest for the next start."""
        for segment in self.segments:
            if segment.fd is not None:
                with contextlib.suppress(OSError):
                    if segment.dirty:
                        os.fsync(segment.fd)
                    os.close(segment.fd)
                segment.fd = None
            segment.sealed = True
            if segment.outstanding <= 0:
                self._delete(segment)
        self.segments = [s for s in self.segments if not s.deleted]
        self.active = None
        if self._lock_fd is not None:
            if not self.segments:  # nothing left to replay: the lock file goes too
                with contextlib.suppress(OSError):
                    (self.directory / f"{self.owner}{_LOCK}").unlink()
            os.close(self._lock_fd)  # releases the flock: a later start adopts what is left
            self._lock_fd = None

    def abandon(self) -> None:
        """Close every file descriptor and delete nothing, as a killed process would (tests)."""
        for segment in self.segments:
            if segment.fd is not None:
                os.close(segment.fd)
                segment.fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.segments = []
        self.active = None

    # ------------------------------------------------------------------ hot path

    def append(self, data: bytes, count: int) -> Segment:
        """Write `count` records' lines with one write() (a partial write is finished); the segment holding them."""
        segment = self.active
        if segment is None or segment.fd is None:
            raise OSError("the spool is not open")
        if segment.size >= self.segment_bytes:
            segment = self._rotate()
        fd = segment.fd
        assert fd is not None
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        segment.size += len(data)
        segment.outstanding += count
        segment.dirty = True
        return segment

    # ------------------------------------------------------------------ acknowledgements and syncing

    def ack(self, segment: Segment, count: int) -> None:
        """The store holds `count` more of this segment's records; a sealed segment with none left goes."""
        segment.outstanding -= count
        if segment.sealed and segment.outstanding <= 0 and segment.fd is None:
            self._delete(segment)
            self.segments.remove(segment)

    async def sync(self) -> None:
        """fsync what was written since the last sync (off the event loop); close sealed segments' files."""
        loop = asyncio.get_running_loop()
        for segment in list(self.segments):
            fd = segment.fd
            if fd is None:
                continue
            if segment.dirty:
                segment.dirty = False
                try:
                    await loop.run_in_executor(None, os.fsync, fd)
                except OSError as exc:
                    log.warning("spend spool: fsync of %s failed: %s", segment.path.name, exc)
            if segment.sealed and segment.fd is not None:
                os.close(segment.fd)
                segment.fd = None
                if segment.outstanding <= 0:
                    self._delete(segment)
                    self.segments.remove(segment)

    @property
    def files(self) -> list[Path]:
        """Our segment files on disk (tests, diagnostics)."""
        return sorted(self.directory.glob(f"{self.owner}.*{_SUFFIX}"))

    # ------------------------------------------------------------------ internals

    def _next_path(self) -> Path:
        self._seq += 1
        return self.directory / f"{self.owner}.{self._seq:08d}{_SUFFIX}"

    def _rotate(self) -> Segment:
        if self.active is not None:
            self.active.sealed = True  # its fd is synced and closed by the next `sync`
        path = self._next_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        segment = Segment(path, fd)
        self.segments.append(segment)
        self.active = segment
        return segment

    def _delete(self, segment: Segment) -> None:
        if segment.deleted:
            return
        segment.deleted = True
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()

    def _adopt(self) -> Iterator[tuple[Segment, list[bytes]]]:
        """Segments whose owner is gone (its lock free, or no lock file): renamed to us, with their lines."""
        free: dict[str, bool] = {}
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            owner = path.name.split(".", 1)[0]
            if owner == self.owner:
                continue
            if owner not in free:
                free[owner] = self._owner_gone(owner)
            if not free[owner]:
                continue
            target = self._next_path()
            try:
                os.rename(path, target)
            except FileNotFoundError:  # another starting process adopted it first
                continue
            data = target.read_bytes()
            lines = [line for line in data.split(b"\n") if line]
            segment = Segment(target, None, size=len(data), outstanding=len(lines), sealed=True)
            self.segments.append(segment)
            yield segment, lines
        for owner, gone in free.items():
            if gone:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{owner}{_LOCK}").unlink()

    def _owner_gone(self, owner: str) -> bool:
        """True when no live process holds `owner`'s lock (or it has none)."""
        try:
            fd = os.open(self.directory / f"{owner}{_LOCK}", os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing releases the probe's lock at once
        return True
