"""C2SP signed-note with the Ed25519 key formats of Go's golang.org/x/mod/sumdb/note.

A note is a text ending in a newline, a blank line, then one line per signature:
"— <key name> <base64(4-byte key ID || Ed25519 signature of the text)>". Keys are text:
verifier `<name>+<8 hex key ID>+<base64(0x01 || public key)>`, signer
`PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 || seed)>` (SPEC section 8). Using the
public formats means tools nobody here wrote (Go's note package, tlog witnesses) can check
what the service signs, and its keys can be made with theirs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit_service.core.encoding import b64decode, b64encode

ALGORITHM_ED25519: Final = 0x01
"""Signature type byte of Ed25519 in key IDs and key texts (the only type supported)."""

KEY_ID_SIZE: Final = 4
"""Bytes of key ID at the front of every decoded signature."""

ED25519_KEY_SIZE: Final = 32
"""Bytes in an Ed25519 public key, and in the seed a private key is made from."""

MAX_SIGNATURES: Final = 100
"""Signature lines a note may have: Go's limit (the spec requires accepting at least 16),
so a hostile note cannot make a verifier spend long on it."""

SIGNATURE_PREFIX: Final = "\u2014 "
"""Every signature line starts with an em dash and a space."""

PRIVATE_KEY_PREFIX: Final = "PRIVATE+KEY+"
"""Signer keys start with this, so a secret is never mistaken for a verifier key."""


class NoteError(ValueError):
    """A malformed key or note, or a note no known key verified: one line, never a secret."""


def check_key_name(name: str) -> None:
    """Raise NoteError unless `name` can name a key.

    Non-empty UTF-8 with no Unicode whitespace and no '+' (the spec's rules; '+' separates
    the fields of a key text), and no control character, which no note may carry.
    """
    if not name:
        raise NoteError("key name is empty")
    if any(ch.isspace() or ch == "+" or ch < " " for ch in name):
        raise NoteError(f"key name {name!r} contains whitespace, '+' or a control character")
    _check_utf8(name, "key name")


def key_id(name: str, public_key: bytes) -> int:
    """The first 4 bytes, big-endian, of SHA-256(name || 0x0A || 0x01 || public key)."""
    check_key_name(name)
    if len(public_key) != ED25519_KEY_SIZE:
        raise NoteError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes, not {len(public_key)}")
    digest = hashlib.sha256(
        name.encode() + b"\n" + bytes([ALGORITHM_ED25519]) + public_key
    ).digest()
    return int.from_bytes(digest[:KEY_ID_SIZE], "big")


@dataclass(frozen=True)
class VerifierKey:
    """A named Ed25519 public key; its key ID is derived, so it cannot disagree."""

    name: str
    public_key: bytes
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id(self.name, self.public_key))

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse `<name>+<8 hex key ID>+<base64(0x01 || public key)>`."""
        name, declared_id, key_data = _split_key_text(text, "verifier key")
        verifier = cls(name, _key_material(key_data, "verifier key"))
        if verifier.key_id != declared_id:
            raise NoteError("verifier key: key ID does not match the public key")
        return verifier

    def to_text(self) -> str:
        """The key text to hand to verifiers."""
        data = b64encode(bytes([ALGORITHM_ED25519]) + self.public_key)
        return f"{self.name}+{self.key_id:08x}+{data}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SignerKey:
    """A named Ed25519 private key. Its repr shows the name and key ID, never the key."""

    __slots__ = ("_key_id", "_name", "_private")

    def __init__(self, name: str, seed: bytes) -> None:
        if len(seed) != ED25519_KEY_SIZE:
            raise NoteError(f"an Ed25519 seed is {ED25519_KEY_SIZE} bytes, not {len(seed)}")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self._name = name
        self._key_id = key_id(name, self._public_key())

    @property
    def name(self) -> str:
        """The key name, as in the signature lines."""
        return self._name

    @property
    def key_id(self) -> int:
        """The key ID of the matching public key."""
        return self._key_id

    @classmethod
    def parse(cls, text: str) -> SignerKey:
        """Parse `PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 || seed)>`."""
        if not text.startswith(PRIVATE_KEY_PREFIX):
            raise NoteError(f"signer key does not start with {PRIVATE_KEY_PREFIX}")
        name, declared_id, key_data = _split_key_text(
            text[len(PRIVATE_KEY_PREFIX) :], "signer key"
        )
        signer = cls(name, _key_material(key_data, "signer key"))
        if signer.key_id != declared_id:
            raise NoteError("signer key: key ID does not match the key")
        return signer

    def to_text(self) -> str:
        """The SECRET key text, for the key file only."""
        data = b64encode(bytes([ALGORITHM_ED25519]) + self._private.private_bytes_raw())
        return f"{PRIVATE_KEY_PREFIX}{self.name}+{self.key_id:08x}+{data}"

    def verifier(self) -> VerifierKey:
        """The matching public key."""
        return VerifierKey(self.name, self._public_key())

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message` (deterministic, RFC 8032)."""
        return self._private.sign(message)

    def _public_key(self) -> bytes:
        return self._private.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return f"SignerKey(name={self.name!r}, key_id={self.key_id:08x})"


def check_note_text(text: str) -> None:
    """Raise NoteError unless `text` can be signed: it ends in a newline and holds no
    control character but newlines (signed-note's rules for the whole note)."""
    _check_note_characters(text, "note text")
    if not text.endswith("\n"):
        raise NoteError("note text does not end with a newline")


def generate_signer(name: str) -> SignerKey:
    """A new random signer key for `name`."""
    return SignerKey(name, Ed25519PrivateKey.generate().private_bytes_raw())


@dataclass(frozen=True)
class VerifiedNote:
    """A note's text, and the names of the known keys whose signatures on it verified."""

    text: str
    signed_by: tuple[str, ...]


def sign_note(text: str, signers: Sequence[SignerKey]) -> str:
    """The signed note: `text`, a blank line, one signature line per signer, in order.

    `text` must pass `check_note_text`; one or more distinct signers, at most
    MAX_SIGNATURES.
    """
    check_note_text(text)
    if not signers:
        raise NoteError("a note needs at least one signer")
    if len(signers) > MAX_SIGNATURES:
        raise NoteError(f"a note has at most {MAX_SIGNATURES} signatures, got {len(signers)}")
    if len({(s.name, s.key_id) for s in signers}) != len(signers):
        raise NoteError("the same signer key is given twice")
    message = text.encode()
    lines = (
        f"{SIGNATURE_PREFIX}{s.name} "
        f"{b64encode(s.key_id.to_bytes(KEY_ID_SIZE, 'big') + s.sign(message))}\n"
        for s in signers
    )
    return text + "\n" + "".join(lines)


def open_note(note: str | bytes, verifiers: Iterable[VerifierKey]) -> VerifiedNote:
    """Check a signed note against the known keys; return its text and who signed it.

    Follows signed-note: signatures from unknown keys (name or key ID not both known) are
    ignored; a known key's signature that fails rejects the whole note; at least one known
    key must have signed. The text is split from the signatures at the last blank line.
    Every signature from a known key is checked, repeats too (the spec's MUST; Go's
    note.Open checks only the first per key).
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    _check_note_characters(note, "note")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("note does not end with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signature lines, more than {MAX_SIGNATURES}")
    known = _by_name_and_id(verifiers)
    message = text.encode()
    signed_by: list[str] = []
    for line in lines:
        name, signer_id, signature = _parse_signature_line(line)
        verifier = known.get((name, signer_id))
        if verifier is None:
            continue
        if not verifier.verify(message, signature):
            raise NoteError(f"invalid signature for key {name}+{signer_id:08x}")
        if name not in signed_by:
            signed_by.append(name)
    if not signed_by:
        raise NoteError("note has no signature from a known key")
    return VerifiedNote(text, tuple(signed_by))


def _split_key_text(text: str, what: str) -> tuple[str, int, str]:
    """Split `<name>+<8 hex key ID>+<key data>` (key data is base64, which may hold '+').

    Errors name no part of the text: a signer key's text is a secret however mangled.
    """
    name, _, rest = text.partition("+")
    hex_id, separator, key_data = rest.partition("+")
    if not separator:
        raise NoteError(f"{what} is not <name>+<key ID>+<key data>")
    try:
        check_key_name(name)
    except NoteError:
        raise NoteError(
            f"{what}: key name is empty or contains whitespace, '+' or a control character"
        ) from None
    if len(hex_id) != 8 or not all(ch in "0123456789abcdefABCDEF" for ch in hex_id):
        raise NoteError(f"{what}: key ID is not 8 hex digits")
    return name, int(hex_id, 16), key_data


def _key_material(key_data: str, what: str) -> bytes:
    """The 32 key bytes from base64(0x01 || key)."""
    try:
        data = b64decode(key_data)
    except ValueError as exc:
        raise NoteError(f"{what}: key data is {exc}") from None
    if not data or data[0] != ALGORITHM_ED25519:
        raise NoteError(f"{what}: unknown algorithm (only 0x01, Ed25519, is supported)")
    if len(data) != 1 + ED25519_KEY_SIZE:
        raise NoteError(f"{what}: Ed25519 key data is {len(data) - 1} bytes, not 32")
    return data[1:]


def _parse_signature_line(line: str) -> tuple[str, int, bytes]:
    """`— <name> <base64>` as (key name, key ID, signature bytes)."""
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError("a signature line does not start with an em dash and a space")
    name, separator, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not separator:
        raise NoteError("a signature line has no space between key name and signature")
    check_key_name(name)
    try:
        data = b64decode(encoded)
    except ValueError as exc:
        raise NoteError(f"signature by {name} is {exc}") from None
    if len(data) <= KEY_ID_SIZE:
        raise NoteError(f"signature by {name} is too short to hold a key ID and a signature")
    return name, int.from_bytes(data[:KEY_ID_SIZE], "big"), data[KEY_ID_SIZE:]


def _by_name_and_id(verifiers: Iterable[VerifierKey]) -> dict[tuple[str, int], VerifierKey]:
    known: dict[tuple[str, int], VerifierKey] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        if known.setdefault(slot, verifier) != verifier:
            raise NoteError(f"two different verifier keys are named {slot[0]}+{slot[1]:08x}")
    return known


def _check_note_characters(text: str, what: str) -> None:
    """Signed notes are UTF-8 with no control character except newline."""
    if any(ch < " " and ch != "\n" for ch in text):
        raise NoteError(f"{what} contains a control character other than newline")
    _check_utf8(text, what)


def _check_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"{what} is not valid UTF-8 (it holds a lone surrogate)") from None
