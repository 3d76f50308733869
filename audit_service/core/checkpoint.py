"""C2SP tlog-checkpoint: the note text that states a tenant's tree size and root hash.

Three lines, each ending in a newline: the origin, the tree size in decimal, the root hash
in standard base64; any further lines are opaque extension lines (the service writes none).
The service's origin line is `<checkpoint_origin>/<tenant_id>` (SPEC section 8): one key
signs every tenant's checkpoints, and no checkpoint of one tenant reads as another's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from audit_service.core.chain import TENANT_ID_PATTERN
from audit_service.core.encoding import b64decode, b64encode
from audit_service.core.merkle import HASH_SIZE, MAX_TREE_SIZE
from audit_service.core.signed_note import (
    NoteError,
    VerifierKey,
    check_key_name,
    check_note_text,
    open_note,
)

TENANT_ID: Final = re.compile(TENANT_ID_PATTERN)
"""A tenant id (SPEC section 2), the event schema's rule: it never holds '/'."""

_TREE_SIZE: Final = re.compile(r"0|[1-9][0-9]*")
"""ASCII decimal with no leading zeros (int() would also take '+1', ' 1', '1_0' and
non-ASCII digits)."""


class CheckpointError(ValueError):
    """A checkpoint text or origin that breaks tlog-checkpoint or the service's rules."""


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint body: whose tree, how many leaves, and its RFC 9162 root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def format_checkpoint(origin: str, size: int, root: bytes) -> str:
    """The checkpoint text: origin, size and base64 root, each line ending in a newline."""
    if not origin or "\n" in origin:
        raise CheckpointError("the origin must be one non-empty line")
    if not 0 <= size <= MAX_TREE_SIZE:
        raise CheckpointError(f"tree size {size} is outside [0, {MAX_TREE_SIZE}]")
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"a root hash is {HASH_SIZE} bytes, got {len(root)}")
    text = f"{origin}\n{size}\n{b64encode(root)}\n"
    _check_text(text)
    return text


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse and validate a checkpoint text (a note's text, as `open_note` returns it)."""
    _check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("a checkpoint needs origin, tree size and root hash lines")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise CheckpointError("the origin line is empty")
    if not _TREE_SIZE.fullmatch(size_line):
        raise CheckpointError(
            f"tree size {size_line[:32]!r} is not a decimal number without leading zeros"
        )
    size = int(size_line)
    if size > MAX_TREE_SIZE:
        raise CheckpointError(f"tree size {size_line[:32]} is larger than {MAX_TREE_SIZE}")
    try:
        root = b64decode(root_line)
    except ValueError as exc:
        raise CheckpointError(f"root hash is {exc}") from None
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"root hash is {len(root)} bytes, not {HASH_SIZE}")
    if "" in extensions:
        raise CheckpointError("an extension line is empty")
    return Checkpoint(origin, size, root, tuple(extensions))


def tenant_origin(origin: str, tenant_id: str) -> str:
    """The origin line of a tenant's checkpoints: `<origin>/<tenant_id>`."""
    _check_service_origin(origin)
    _check_tenant_id(tenant_id)
    return f"{origin}/{tenant_id}"


def tenant_from_origin(origin: str, origin_line: str) -> str:
    """The tenant id in an origin line made by `tenant_origin(origin, ...)`, or raise."""
    _check_service_origin(origin)
    prefix = f"{origin}/"
    if not origin_line.startswith(prefix):
        raise CheckpointError(
            f"origin line {origin_line[:160]!r} is not under origin {origin!r}"
        )
    tenant_id = origin_line[len(prefix) :]
    _check_tenant_id(tenant_id)
    return tenant_id


def open_tenant_checkpoint(
    note: str, tenant_id: str, verifiers: Iterable[VerifierKey]
) -> Checkpoint:
    """The checkpoint a signed note states for `tenant_id`, or CheckpointError saying why not.

    A known key must have signed it (`open_note`), its text must be a checkpoint, and its
    origin must end in `/<tenant_id>`. Whatever precedes the last '/' is not checked: a
    verifier does not know the service's checkpoint_origin (it defaults to the key's name,
    so it changes with a rotation).
    """
    try:
        text = open_note(note, verifiers).text
    except NoteError as exc:
        raise CheckpointError(f"signature not accepted: {exc}") from None
    try:
        checkpoint = parse_checkpoint(text)
    except CheckpointError as exc:
        raise CheckpointError(f"the signed text is not a checkpoint: {exc}") from None
    prefix, _, named = checkpoint.origin.rpartition("/")
    try:
        if tenant_from_origin(prefix, checkpoint.origin) != tenant_id:
            raise CheckpointError(f"it names tenant {named!r}")
    except CheckpointError as exc:
        raise CheckpointError(
            f"origin {checkpoint.origin[:160]!r} is not <origin>/{tenant_id} ({exc})"
        ) from None
    return checkpoint


def _check_service_origin(origin: str) -> None:
    # tlog-checkpoint: the origin SHOULD hold neither spaces nor '+', a key name's rules;
    # tlog-tiles: no trailing slash.
    try:
        check_key_name(origin)
    except NoteError:
        raise CheckpointError(
            f"checkpoint origin {origin[:160]!r} is empty or holds whitespace, '+' or a "
            "control character"
        ) from None
    if origin.endswith("/"):
        raise CheckpointError(f"checkpoint origin {origin[:160]!r} ends with '/'")


def _check_tenant_id(tenant_id: str) -> None:
    if not TENANT_ID.fullmatch(tenant_id):
        raise CheckpointError(
            f"tenant id {tenant_id[:160]!r} is not 1-128 characters of [A-Za-z0-9._:-]"
        )


def _check_text(text: str) -> None:
    try:
        check_note_text(text)
    except NoteError as exc:
        raise CheckpointError(f"checkpoint {exc}") from None


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """One signed checkpoint as the sink keeps it (SPEC 8): a JSON Lines object.

    `tenant_id`, `tree_size` and `root_hash` are conveniences for people and tools; a
    verifier trusts only the signed `note` and checks that they agree with it.
    """

    tenant_id: str
    tree_size: int
    root_hash: bytes
    note: str

    def to_sink_line(self) -> str:
        """One line of the tenant's sink file, newline included."""
        return json.dumps({
            "tenant_id": self.tenant_id, "tree_size": self.tree_size,
            "root_hash": b64encode(self.root_hash), "note": self.note,
        }, separators=(",", ":")) + "\n"

    @classmethod
    def from_sink_line(cls, line: str) -> SignedCheckpoint:
        """Parse one sink line; CheckpointError says what is malformed."""
        try:
            fields = json.loads(line)
        except ValueError:
            raise CheckpointError("not a JSON object") from None
        if not isinstance(fields, dict):
            raise CheckpointError("not a JSON object")
        tenant_id, tree_size = fields.get("tenant_id"), fields.get("tree_size")
        root_hash, note = fields.get("root_hash"), fields.get("note")
        if not isinstance(tenant_id, str) or not TENANT_ID.fullmatch(tenant_id):
            raise CheckpointError("tenant_id is missing or not a tenant id")
        if type(tree_size) is not int or not 0 < tree_size <= MAX_TREE_SIZE:
            raise CheckpointError("tree_size is missing or not a positive integer")
        if not isinstance(root_hash, str) or not isinstance(note, str):
            raise CheckpointError("root_hash or note is missing or not a string")
        try:
            root = b64decode(root_hash)
        except ValueError as exc:
            raise CheckpointError(f"root_hash is {exc}") from None
        if len(root) != HASH_SIZE:
            raise CheckpointError(f"root_hash is {len(root)} bytes, not {HASH_SIZE}")
        return cls(tenant_id, tree_size, root, note)


SINK_FILE_PREFIX: Final = "checkpoints-"
SINK_FILE_SUFFIX: Final = ".jsonl"


def sink_file_name(tenant_id: str) -> str:
    """`checkpoints-<tenant>.jsonl`, the tenant's file in the sink directory: tenant ids
    hold no '/', and the prefix keeps `.` and `..` (valid ids) from naming a directory."""
    _check_tenant_id(tenant_id)
    return f"{SINK_FILE_PREFIX}{tenant_id}{SINK_FILE_SUFFIX}"


def tenant_of_sink_file(name: str) -> str | None:
    """The tenant whose checkpoints the sink file `name` holds, None for any other file."""
    if not (name.startswith(SINK_FILE_PREFIX) and name.endswith(SINK_FILE_SUFFIX)):
        return None
    tenant_id = name[len(SINK_FILE_PREFIX):-len(SINK_FILE_SUFFIX)]
    return tenant_id if TENANT_ID.fullmatch(tenant_id) else None
