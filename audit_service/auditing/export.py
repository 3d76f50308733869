"""Export one tenant's chain as JSON Lines, for verification without this service.

Each line is the record exactly as it was hashed plus its `record_hash`, serialised the way
the hash input is (sorted keys, no spaces, ASCII escapes), in sequence order. So the line
with its `"record_hash":"...",` member removed is byte for byte the text that was hashed,
and any JSON reader (jq, any language) can consume it: no header, no trailer. The line
format is defined with its verifier (`export_verify.export_line`, which needs no
database); lines are rendered here straight from the stored rows (`core.record_text`),
byte for byte the same, at a fraction of the cost of building each record's dict.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from audit_service.core.chain import TENANT_ID_PATTERN
from audit_service.core.errors import ConfigurationError
from audit_service.core.record_text import RECORD_HASH, SEQUENCE_NUMBER, export_line
from audit_service.storage.reader import WHOLE_CHAIN, AuditReader, SequenceRange

STDOUT = "-"
EXPORT_SUFFIX = ".jsonl"
_TENANT_ID = re.compile(TENANT_ID_PATTERN)
WRITE_LINES = 512
"""Lines joined into one write: a TextIO write per ~1.7 KB line cost more than its line."""

@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What was written: an auditor keeps `last_hash` to detect a later truncation."""

    tenant_id: str
    records: int
    first_sequence: int | None
    last_sequence: int | None
    last_hash: str | None


def write_export(
    reader: AuditReader, tenant_id: str, out: TextIO, scope: SequenceRange = WHOLE_CHAIN
) -> ExportSummary:
    """Stream the tenant's records in `scope` to `out` (constant memory, one snapshot)."""
    count = 0
    first = last = None
    last_hash = None
    _, rows = reader.read_chain_rows(tenant_id, scope.first, scope.last)
    lines: list[str] = []
    for row in rows:
        lines.append(export_line(row))
        if len(lines) == WRITE_LINES:
            out.write("".join(lines))
            lines.clear()
        count += 1
        if first is None:
            first = row[SEQUENCE_NUMBER]
        last, last_hash = row[SEQUENCE_NUMBER], row[RECORD_HASH]
    out.write("".join(lines))
    return ExportSummary(tenant_id, count, first, last, last_hash)


@contextmanager
def _output(path: str) -> Iterator[TextIO]:
    """stdout for "-"; otherwise a new file that appears only once complete, so a failed
    export never leaves a shorter file that would still verify."""
    if path == STDOUT:
        try:
            yield sys.stdout
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): keep Python from failing again at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise ConfigurationError("stdout was closed before the export completed") from None
        return
    target = Path(path)
    if target.exists():
        raise ConfigurationError(f"{target} already exists; choose another --output")
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("w", encoding="ascii", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        partial.rename(target)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        partial.unlink(missing_ok=True)


def export_tenant(
    reader: AuditReader, tenant_id: str, output: str, scope: SequenceRange = WHOLE_CHAIN
) -> ExportSummary:
    """Export to `output` ("-" for stdout); a tenant without records in `scope` is an error."""
    with _output(output) as out:
        summary = write_export(reader, tenant_id, out, scope)
        if summary.records == 0:
            raise ConfigurationError(
                f"tenant {tenant_id!r} has no records in {scope.describe()}"
            )
    return summary


def _all_targets(reader: AuditReader, directory: Path) -> list[tuple[str, Path]]:
    """Every tenant and its file, checked before anything is written: a tenant id that is
    not a plain file name (only a tampered store holds one), a head whose records are gone,
    or a file already there stops the export with nothing exported."""
    with_records = set(reader.tenants_with_records())
    tenants = sorted(set(reader.heads()) | with_records)
    for tenant in tenants:
        if not _TENANT_ID.fullmatch(tenant):
            raise ConfigurationError(f"tenant id {tenant!r} is not a valid tenant id; "
                                     "run verify: the store holds records no event made")
        if tenant not in with_records:
            raise ConfigurationError(f"tenant {tenant!r} has a chain head but no records; "
                                     "run verify --tenant to see the break")
    if not tenants:
        raise ConfigurationError("the store holds no chains to export")
    targets = [(tenant, directory / f"{tenant}{EXPORT_SUFFIX}") for tenant in tenants]
    present = [str(path) for _, path in targets if path.exists()]
    if present:
        raise ConfigurationError(
            f"{len(present)} export files already exist ({', '.join(present[:3])}"
            f"{', ...' if len(present) > 3 else ''}); choose another --output-dir")
    return targets


def export_all(
    reader: AuditReader, directory: Path, exported: Callable[[ExportSummary, Path], None]
) -> list[ExportSummary]:
    """Export every tenant's whole chain to `directory`/TENANT.jsonl in one process, each
    in its own snapshot; `exported` hears of each file once it is complete.

    Tenants are those with a head or records when the export starts; one that appears
    during it belongs to the next export.
    """
    targets = _all_targets(reader, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create {directory}: {exc.strerror}") from exc
    summaries = []
    for tenant, path in targets:
        summary = export_tenant(reader, tenant, str(path))
        exported(summary, path)
        summaries.append(summary)
    return summaries
