"""The checkpoint sink: signed checkpoints kept outside the database (SPEC 8).

The database's owner can rewrite the chain and `audit_checkpoints`; a verifier compares the
chain against copies kept somewhere else. `CheckpointSink` is what the daemon needs of such
a place (append in order, say how far a tenant got); `DirectorySink` keeps one JSON Lines
file per tenant, appended and fsync'd, never rewritten. An object store with object lock
or a witness can stand behind the same two methods.
"""

from __future__ import annotations

import fcntl
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from audit_service.core.checkpoint import CheckpointError, SignedCheckpoint, sink_file_name
from audit_service.storage.reader import AuditReader

TAIL_CHUNK_BYTES: Final = 8192
"""Read backwards in steps of this size to find a file's last line."""
PUBLISH_CHUNK_TENANTS: Final = 500
"""Tenants per query when publishing: what the sink lacks is read a chunk at a time, so a
first publication into an empty sink does not hold every note in memory at once."""
FILE_MODE: Final = 0o644
"""Checkpoints are public: anyone may verify them."""


class SinkError(OSError):
    """The sink cannot be read or written (full disk, permissions, a damaged file)."""


class CheckpointSink(Protocol):
    """Where checkpoints are published; every tenant's checkpoints in ascending size."""

    def last_size(self, tenant_id: str) -> int:
        """Tree size of the tenant's newest published checkpoint (0: none yet)."""
        ...

    def append(self, tenant_id: str, checkpoints: Sequence[SignedCheckpoint]) -> int:
        """Publish those beyond `last_size`, in order, durably; return how many."""
        ...


class DirectorySink:
    """One append-only JSON Lines file per tenant in `directory`.

    Appends take an exclusive flock on the tenant's file and re-read its last line, so two
    daemons (or a daemon and `checkpoints publish`) never write a checkpoint twice or out
    of order. Each append is fsync'd before it counts as published; a new file's directory
    entry is fsync'd too.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, tenant_id: str) -> Path:
        return self.directory / sink_file_name(tenant_id)

    def last_size(self, tenant_id: str) -> int:
        path = self.path(tenant_id)
        try:
            with path.open("rb") as handle:
                return _last_size(handle, path)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise SinkError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def append(self, tenant_id: str, checkpoints: Sequence[SignedCheckpoint]) -> int:
        path = self.path(tenant_id)
        try:
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            with os.fdopen(fd, "r+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                last = _last_size(handle, path)
                new = [c for c in checkpoints if c.tree_size > last]
                if not new:
                    return 0
                handle.write("".join(c.to_sink_line() for c in new).encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            if created:
                _fsync_directory(self.directory)
        except OSError as exc:
            raise SinkError(f"cannot append to {path}: {exc.strerror or exc}") from exc
        return len(new)


def _last_size(handle: BinaryIO, path: Path) -> int:
    """Tree size of the last line of an open sink file (0 when empty)."""
    line = _last_line(handle)
    if not line:
        return 0
    try:
        return SignedCheckpoint.from_sink_line(line.decode("utf-8")).tree_size
    except (UnicodeDecodeError, CheckpointError) as exc:
        raise SinkError(f"{path}: the last line is damaged ({exc}); nothing appended") from exc


def _last_line(handle: BinaryIO) -> bytes:
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return b""
    tail = b""
    position = end
    while position > 0:
        step = min(TAIL_CHUNK_BYTES, position)
        position -= step
        handle.seek(position)
        tail = handle.read(step) + tail
        if tail.count(b"\n") >= 2 or (position == 0 and tail):
            break
    if not tail.endswith(b"\n"):
        return tail  # torn: _last_size reports it as damaged
    return tail[:-1].rsplit(b"\n", 1)[-1] + b"\n"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Publication:
    """What one publication pass did."""

    appended: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    """Tenant -> why its checkpoints could not be published (they stay pending)."""
    left: int = 0
    """Checkpoints that the database holds and the sink still lacks, as far as known."""


def publish_missing(reader: AuditReader, sink: CheckpointSink,
                    tenants: Iterable[str]) -> Publication:
    """Append to the sink, in order, what audit_checkpoints holds for these tenants beyond
    each one's newest line in the sink. The sink is the bookmark, so a pass can be repeated
    or interrupted at any point without losing or duplicating a checkpoint. A database
    failure propagates; a sink failure is reported per tenant."""
    publication = Publication()
    ordered = sorted(set(tenants))
    for start in range(0, len(ordered), PUBLISH_CHUNK_TENANTS):
        published: dict[str, int] = {}
        for tenant in ordered[start:start + PUBLISH_CHUNK_TENANTS]:
            try:
                published[tenant] = sink.last_size(tenant)
            except SinkError as exc:
                publication.failures[tenant] = str(exc)
        missing = reader.checkpoints_after(published)
        for tenant, group in itertools.groupby(missing, key=lambda c: c.tenant_id):
            checkpoints = list(group)
            try:
                publication.appended += sink.append(tenant, checkpoints)
            except SinkError as exc:
                publication.failures[tenant] = str(exc)
                publication.left += len(checkpoints)
    return publication
