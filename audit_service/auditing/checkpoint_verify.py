"""Signed checkpoints against the records: the verifier's half of SPEC 8 (the core only).

A chain proves internal consistency; whoever can write the database can rewrite a record
and rehash everything after it, or cut off the newest records, and `verify` still passes.
The checkpoints kept outside the database close that hole. Every sink line is checked on
its own (it parses, a given key signed it, the signed text is a checkpoint of the file's
tenant, the line's plain fields agree with it) and in order (tree sizes never go backwards,
one size has one root). The tenant's records, streamed once in sequence order, then rebuild
the RFC 9162 tree over their stored `record_hash` values: at every checkpointed size the
root must be the signed one, and the head must reach the newest checkpoint.

Sink lines are read while the records stream past, so memory stays flat in both. Importing
only the core keeps `verify --file EXPORT --checkpoints DIR` free of any database.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from audit_service.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    SignedCheckpoint,
    open_tenant_checkpoint,
    tenant_of_sink_file,
)
from audit_service.core.encoding import b64encode
from audit_service.core.errors import ConfigurationError
from audit_service.core.merkle import HASH_SIZE, CompactRange, leaf_hash
from audit_service.core.signed_note import PRIVATE_KEY_PREFIX, NoteError, VerifierKey

MAX_FAILURES: Final = 20
"""Failures kept per tenant; a rewritten chain fails every later checkpoint, and the first
ones carry the evidence. The rest are counted."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SinkFile:
    """A tenant's sink file as it stood when the run began.

    Lines appended after `size` bytes may cover records newer than the database snapshot
    the run reads, so they are not read (the daemon appends only after its commit).
    """

    tenant_id: str
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class CheckpointFailure:
    """One thing wrong with a tenant's checkpoints, with where it was found."""

    tenant_id: str
    tree_size: int | None
    reason: str
    file: str | None = None
    line: int | None = None

    def describe(self) -> str:
        size = "checkpoint" if self.tree_size is None else f"tree size {self.tree_size}"
        where = f" ({self.file} line {self.line})" if self.line is not None else ""
        return f"tenant {self.tenant_id!r} {size}{where}: {self.reason}"

    def summary(self) -> dict[str, Any]:
        return {"kind": "checkpoint", **dataclasses.asdict(self),
                "description": self.describe()}


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    """What one tenant's checkpoints showed."""

    tenant_id: str
    file: str | None
    checkpoints: int
    """Lines that passed the line checks (signed, well-formed, in order)."""
    verified: int
    """Of those, the checkpoints whose root the records reproduced."""
    newest_size: int
    failures: tuple[CheckpointFailure, ...]
    more_failures: int
    compared: bool
    """False when there were no records to compare them with (offline, no export given)."""

    @property
    def valid(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        """The outcome in a few words, for a tenant's line in `verify`."""
        if not self.checkpoints and self.valid:
            return "no checkpoints in the sink (a new tenant?)"
        if not self.compared:
            return (f"{self.checkpoints} checkpoints signed, up to tree size "
                    f"{self.newest_size}, not compared: no export of this tenant given")
        return f"{self.verified} checkpoints verified, newest tree size {self.newest_size}"

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "checkpoints": self.checkpoints, "verified": self.verified,
                "newest_tree_size": self.newest_size, "compared": self.compared,
                "failures": [f.summary() for f in self.failures],
                "more_failures": self.more_failures}


def load_verifiers(paths: Sequence[str]) -> tuple[VerifierKey, ...]:
    """The verifier keys in these files (`audit-service keygen`'s NAME.pub, one per file)."""
    keys = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ConfigurationError(f"cannot read --public-key {path}: {reason}") from None
        if text.startswith(PRIVATE_KEY_PREFIX):
            raise ConfigurationError(
                f"--public-key {path} holds a signer key (a secret): pass the .pub file")
        try:
            keys.append(VerifierKey.parse(text))
        except NoteError as exc:
            raise ConfigurationError(f"--public-key {path}: {exc}") from None
    return tuple(keys)


def sink_files(path: Path) -> dict[str, SinkFile]:
    """The sink files at `path`, a sink directory (every `checkpoints-<tenant>.jsonl` in
    it; other files are ignored) or one tenant's file, by tenant.

    Each size is taken under a shared flock: the sink appends under an exclusive one, so
    an append in progress is wholly in or wholly out.
    """
    if path.is_dir():
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise ConfigurationError(f"cannot list {path}: {exc.strerror}") from None
        found = {tenant: path / name for name in names
                 if (tenant := tenant_of_sink_file(name)) is not None
                 and (path / name).is_file()}
        if not found:
            raise ConfigurationError(f"{path} holds no checkpoints-<tenant>.jsonl file")
    elif path.is_file():
        tenant = tenant_of_sink_file(path.name)
        if tenant is None:
            raise ConfigurationError(
                f"{path} is not a sink file: its name must be checkpoints-<tenant>.jsonl")
        found = {tenant: path}
    else:
        raise ConfigurationError(f"--checkpoints {path}: no such file or directory")
    return {tenant: SinkFile(tenant, file, _settled_size(file))
            for tenant, file in found.items()}


def _settled_size(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            return os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_sink_file(sink: SinkFile) -> Iterator[tuple[int, SignedCheckpoint | CheckpointError]]:
    """(line number, checkpoint or why the line is malformed) for every line of the file,
    up to its size at the start of the run."""
    left = sink.size
    try:
        with sink.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if left <= 0:
                    return
                raw, left = raw[:left], left - len(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield number, CheckpointError("not UTF-8")
                    continue
                if not line.endswith("\n"):
                    yield number, CheckpointError("torn line: no newline at the end")
                    continue
                try:
                    yield number, SignedCheckpoint.from_sink_line(line)
                except CheckpointError as exc:
                    yield number, exc
    except OSError as exc:
        raise ConfigurationError(f"cannot read {sink.path}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class _Signed:
    """A sink line that passed every line check: a signed size and root of the tenant."""

    size: int
    root: bytes
    line: int


def _checked_lines(
    sink: SinkFile, verifiers: Sequence[VerifierKey]
) -> Iterator[_Signed | CheckpointFailure]:
    """The file's checkpoints that pass the line checks, in order, or why a line did not."""

    def failure(number: int, size: int | None, reason: str) -> CheckpointFailure:
        return CheckpointFailure(sink.tenant_id, size, reason, sink.path.name, number)

    last: _Signed | None = None
    for number, item in read_sink_file(sink):
        if isinstance(item, CheckpointError):
            yield failure(number, None, f"malformed line: {item}")
            continue
        checked = _line_problem(item, sink.tenant_id, verifiers)
        if isinstance(checked, str):
            yield failure(number, item.tree_size, checked)
            continue
        signed = _Signed(checked.size, checked.root, number)
        if last is not None and signed.size < last.size:
            yield failure(number, signed.size, f"tree size goes backwards (after tree size "
                                               f"{last.size} on line {last.line})")
        elif last is not None and signed.size == last.size:
            if signed.root != last.root:
                yield failure(number, signed.size,
                              f"a second root for the same tree size: {b64encode(signed.root)}"
                              f", line {last.line} signed {b64encode(last.root)}")
        else:
            last = signed
            yield signed


def _line_problem(
    line: SignedCheckpoint, tenant_id: str, verifiers: Sequence[VerifierKey]
) -> Checkpoint | str:
    """The signed checkpoint of a well-formed line, or what is wrong with the line."""
    if line.tenant_id != tenant_id:
        return f"the line says tenant_id {line.tenant_id!r} in the file of {tenant_id!r}"
    try:
        checkpoint = open_tenant_checkpoint(line.note, tenant_id, verifiers)
    except CheckpointError as exc:
        return str(exc)
    if (checkpoint.size, checkpoint.root) != (line.tree_size, line.root_hash):
        return (f"the line's tree_size {line.tree_size} and root_hash "
                f"{b64encode(line.root_hash)} differ from the signed {checkpoint.size} and "
                f"{b64encode(checkpoint.root)}")
    return checkpoint


class TreeCheck:
    """One tenant's checkpoints against its records, fed one `record_hash` at a time in
    sequence order (genesis first); the sink file is read as the tree reaches its sizes."""

    def __init__(self, tenant_id: str, sink: SinkFile | None,
                 verifiers: Sequence[VerifierKey]):
        self.tenant_id = tenant_id
        self._file = sink.path.name if sink else None
        self._lines = _checked_lines(sink, verifiers) if sink else iter(())
        self._tree = CompactRange()
        self._failures: list[CheckpointFailure] = []
        self._more_failures = 0
        self._checkpoints = self._verified = self._newest = 0
        self._matched_size = 0
        self._stopped = False
        self._next = self._pull()

    @property
    def size(self) -> int:
        """Records added so far (the tree's size)."""
        return self._tree.size

    def feed(self, items: Iterable[T], record_hash: Callable[[T], object]) -> Iterator[T]:
        """Pass `items` through, adding each one's record_hash to the tree on the way, so
        the chain verifier and the tree read the records in one pass."""
        for item in items:
            self.add(record_hash(item))
            yield item

    def add(self, record_hash: object) -> None:
        """Append the next record's stored record_hash (64 hex digits) as a leaf."""
        if self._stopped:
            return
        try:
            data = bytes.fromhex(record_hash) if isinstance(record_hash, str) else b""
        except ValueError:
            data = b""
        if len(data) != HASH_SIZE:
            self._fail(None, f"record {self._tree.size} has no 64-hex-digit record_hash: "
                             "checkpoints beyond it are not checked")
            self._stopped = True
            return
        self._tree.append(leaf_hash(data))
        signed = self._next
        if signed is not None and signed.size == self._tree.size:
            root = self._tree.root()
            if root == signed.root:
                self._verified += 1
                self._matched_size = signed.size
            else:
                since = (f"the records up to tree size {self._matched_size} match its "
                         "checkpoint, so a record in sequences "
                         f"{self._matched_size}..{signed.size - 1} differs"
                         if self._matched_size else "no earlier checkpoint matched")
                self._fail(signed.size, f"root hash does not match the records: signed "
                           f"{b64encode(signed.root)}, the records give {b64encode(root)} "
                           f"({since})", signed.line)
            self._next = self._pull()

    def stop(self, reason: str) -> None:
        """Add no more records: the ones that would follow are not bound to the chain (it
        broke), so the checkpoints beyond the tree are failures for `reason`."""
        if not self._stopped and self._next is not None:
            self._fail(self._next.size, reason, self._next.line)
        self._stopped = True

    def finish(self, head_size: int | None) -> CheckpointReport:
        """The report, once every record was added. `head_size`: the tenant's head as a
        tree size (recorded head + 1; offline, the export's last record + 1); None when
        there were no records to compare with at all."""
        newest = None
        while self._next is not None:
            newest, self._next = self._next, self._pull()
        leaves = self._tree.size
        if newest is not None and head_size is not None and not self._stopped:
            if head_size == 0 and leaves == 0:
                reason = "all removed: the tenant has no records in the database"
            elif newest.size > head_size:
                reason = (f"truncated: head at tree size {head_size} is behind checkpoint "
                          f"{newest.size} ({newest.size - head_size} signed records are gone)")
            else:
                reason = f"the records end at tree size {leaves}, before this checkpoint"
            self._fail(newest.size, reason, newest.line)
        return CheckpointReport(
            self.tenant_id, self._file, self._checkpoints, self._verified, self._newest,
            tuple(self._failures), self._more_failures, compared=head_size is not None)

    def _pull(self) -> _Signed | None:
        """The next line that passed the line checks; failures on the way are kept."""
        for item in self._lines:
            if isinstance(item, CheckpointFailure):
                self._keep(item)
                continue
            self._checkpoints += 1
            self._newest = item.size
            return item
        return None

    def _fail(self, size: int | None, reason: str, line: int | None = None) -> None:
        self._keep(CheckpointFailure(self.tenant_id, size, reason, self._file, line))

    def _keep(self, failure: CheckpointFailure) -> None:
        if len(self._failures) < MAX_FAILURES:
            self._failures.append(failure)
        else:
            self._more_failures += 1


@dataclass(frozen=True, slots=True)
class TenantCheckpoints:
    """What a run needs to check one tenant's checkpoints (picklable for `verify --jobs`)."""

    tenant_id: str
    sink: SinkFile | None
    verifiers: tuple[VerifierKey, ...]

    def start(self) -> TreeCheck:
        return TreeCheck(self.tenant_id, self.sink, self.verifiers)
