"""Signing checkpoints on the write path: the daemon's key, its policy, and the notes.

A checkpoint is signed inside the transaction that commits the records it covers (or, for
a tree that grew less than checkpoint_every_records before checkpoint_every_s passed, in a
short transaction of its own), so the database never holds a checkpoint of records it does
not hold. Publishing it to the sink comes after the commit (see publisher).
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from audit_service.config import Settings
from audit_service.core.checkpoint import SignedCheckpoint, format_checkpoint, tenant_origin
from audit_service.core.errors import ConfigurationError
from audit_service.core.signed_note import (
    NoteError,
    SignerKey,
    check_key_name,
    generate_signer,
    sign_note,
)
from audit_service.core.tree_state import CheckpointPolicy, TreeState
from audit_service.storage.engine import translated_errors
from audit_service.storage.store import ChainStore, NewCheckpoint

SWEEP_MIN_S: Final = 0.25
SWEEP_MAX_S: Final = 5.0
"""Bounds on how often the loop looks for trees due by time: such a tree is signed
within checkpoint_every_s plus at most this long."""
PRIVATE_MODE_BITS: Final = stat.S_IRWXG | stat.S_IRWXO
"""A signer key readable by anyone but its owner is refused, as ssh refuses such keys."""
SIGNER_KEY_MODE: Final = 0o600
VERIFIER_KEY_MODE: Final = 0o644
"""The verifier key is public: auditors need it."""


class Checkpointer:
    """Signs a tenant's checkpoint when its tree is due one."""

    def __init__(self, signer: SignerKey, origin: str, policy: CheckpointPolicy):
        self.signer = signer
        self.origin = origin
        self.policy = policy

    def due(self, state: TreeState, now: datetime) -> bool:
        return self.policy.due(state, now)

    def sign(self, tenant_id: str, state: TreeState, now: datetime) -> NewCheckpoint:
        """Sign the tree as it stands and mark it checkpointed in `state`."""
        size, root = state.tree.size, state.tree.root()
        text = format_checkpoint(tenant_origin(self.origin, tenant_id), size, root)
        note = sign_note(text, [self.signer])
        state.checkpointed_size, state.checkpointed_at = size, now
        return NewCheckpoint(SignedCheckpoint(tenant_id, size, root, note), self.signer.name)


def sweep_interval_s(checkpointer: Checkpointer) -> float:
    """How often the loop looks for trees due a checkpoint by time."""
    return min(SWEEP_MAX_S, max(SWEEP_MIN_S, checkpointer.policy.every_s / 4))


def load_signer(path: str) -> SignerKey:
    """The signer key in `path` (`audit-service keygen` format); refused when others can
    read it, since whoever holds it can sign a rewritten log."""
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read checkpoint_key_file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"checkpoint_key_file {path} is not UTF-8") from None
    if mode & PRIVATE_MODE_BITS:
        raise ConfigurationError(
            f"checkpoint_key_file {path} is accessible by others (mode "
            f"{stat.S_IMODE(mode):04o}): chmod 600 it")
    try:
        return SignerKey.parse(text.strip())
    except NoteError as exc:
        raise ConfigurationError(f"checkpoint_key_file {path}: {exc}") from None


def write_key_pair(name: str, directory: Path) -> tuple[Path, Path, str]:
    """A new signer key in `directory/NAME.key` (0600 from its creation: the secret is never
    readable by others, not even for a moment) and its verifier key in `NAME.pub`; returns
    both paths and the verifier key text. Neither file may exist already."""
    try:
        check_key_name(name)
    except NoteError as exc:
        raise ConfigurationError(f"--name: {exc}") from None
    if "/" in name:
        raise ConfigurationError(f"--name: key name {name!r} contains '/' (it names files)")
    signer = generate_signer(name)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (key_path, pub_path):
        if os.path.lexists(path):
            raise ConfigurationError(f"{path} exists: keygen never overwrites a key")
    _create(key_path, signer.to_text() + "\n", SIGNER_KEY_MODE)
    verifier = signer.verifier().to_text()
    try:
        _create(pub_path, verifier + "\n", VERIFIER_KEY_MODE)
    except ConfigurationError:
        key_path.unlink()  # no signer key without its verifier key
        raise
    return key_path, pub_path, verifier


def _create(path: Path, text: str, mode: int) -> None:
    """Write a new file (O_EXCL: never over an existing one, nor through a symlink)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise ConfigurationError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink()  # no half-written key left behind
        raise ConfigurationError(f"cannot write {path}: {exc.strerror or exc}") from None


def checkpointer_from(settings: Settings) -> Checkpointer | None:
    """The daemon's checkpointer, None when signing is off (no checkpoint_key_file)."""
    if not settings.checkpoint_key_file:
        return None
    signer = load_signer(settings.checkpoint_key_file)
    origin = settings.checkpoint_origin or signer.name
    if settings.checkpoint_origin is None:  # Settings checked an origin that was given
        try:
            tenant_origin(origin, "t")
        except ValueError as exc:
            raise ConfigurationError(
                f"the key's name cannot be the checkpoint origin ({exc}): set "
                "checkpoint_origin") from None
    policy = CheckpointPolicy(settings.checkpoint_every_records, settings.checkpoint_every_s)
    return Checkpointer(signer, origin, policy)


def sign_grown_trees(
    engine: Engine, checkpointer: Checkpointer, now: datetime, *, every_grown: bool = False
) -> list[str]:
    """Checkpoint, in one transaction, the trees that grew since a checkpoint older than
    `checkpoint_every_s` (all that grew with `every_grown`: a clean shutdown); returns the
    tenants signed. Busy tenants are skipped: their batches checkpoint them."""
    signed_before = None if every_grown else now - timedelta(seconds=checkpointer.policy.every_s)
    with translated_errors("signing checkpoints"), Session(engine) as session, session.begin():
        store = ChainStore(session, consumer_group="", topic="")
        trees = store.lock_trees_due(signed_before)
        checkpoints = [checkpointer.sign(tenant, state, now) for tenant, state in trees.items()]
        store.save_checkpointed(trees)
        store.insert_checkpoints(checkpoints)
    return sorted(trees)
