"""Signed notes and keys against the public vectors of Go's golang.org/x/mod/sumdb/note.

The PeterNeumann and EnochRoot keys, notes and signatures are copied from that package's
documentation and note_test.go (the verifier key and note also appear in SPEC section 8).
Ed25519 is deterministic, so the signer key must reproduce Go's signature exactly.
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from audit_service.core.signed_note import (
    MAX_SIGNATURES,
    NoteError,
    SignerKey,
    VerifiedNote,
    VerifierKey,
    check_key_name,
    generate_signer,
    key_id,
    open_note,
    sign_note,
)

PETER_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_SEED_TEXT = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VERIFIER = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgK"
    "vqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_LINE = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOT"
    "GwnWLox33WWd1RvMc+QQ=\n"
)
# SPEC section 8's note, byte for byte: the text, an empty line, Peter's signature line.
SPEC_NOTE = TEXT + "\n" + PETER_LINE


def peter() -> VerifierKey:
    return VerifierKey.parse(PETER_VERIFIER)


def enoch() -> VerifierKey:
    return VerifierKey.parse(ENOCH_VERIFIER)


# --- Interoperability vectors -----------------------------------------------------------


def test_the_spec_note_is_the_exact_bytes_of_the_go_vector() -> None:
    raw = SPEC_NOTE.encode()
    assert raw.count(b"\xe2\x80\x94 ") == 1  # U+2014 EM DASH, then a space
    assert raw.endswith(b"JnAM=\n") and b"\n\n\xe2\x80\x94" in raw


def test_the_peter_neumann_verifier_key_accepts_the_spec_note() -> None:
    assert open_note(SPEC_NOTE, [peter()]) == VerifiedNote(TEXT, ("PeterNeumann",))
    assert open_note(SPEC_NOTE.encode(), [peter()]).text == TEXT


def test_the_go_signer_key_gives_the_verifier_key_and_the_same_signature() -> None:
    signer = SignerKey.parse(PETER_SIGNER)
    assert signer.verifier() == peter()
    assert signer.verifier().to_text() == PETER_VERIFIER
    assert signer.to_text() == PETER_SIGNER
    assert sign_note(TEXT, [signer]) == SPEC_NOTE


def test_a_doubly_signed_go_note_reports_each_known_signer() -> None:
    note = TEXT + "\n" + PETER_LINE + ENOCH_LINE
    assert open_note(note, [peter(), enoch()]).signed_by == ("PeterNeumann", "EnochRoot")
    assert open_note(note, [enoch()]).signed_by == ("EnochRoot",)
    assert open_note(note, [peter()]).signed_by == ("PeterNeumann",)


def test_key_id_is_the_spec_hash_computed_independently() -> None:
    public_key = base64.b64decode(PETER_VERIFIER.split("+")[2])[1:]
    digest = hashlib.sha256(b"PeterNeumann" + b"\x0a" + b"\x01" + public_key).digest()
    assert key_id("PeterNeumann", public_key) == int.from_bytes(digest[:4], "big")
    assert key_id("PeterNeumann", public_key) == 0xC74F20A3
    assert peter().key_id == 0xC74F20A3
    assert enoch().key_id == 0xAF0CFE78


# --- Key texts --------------------------------------------------------------------------


def test_generated_keys_have_the_go_text_formats_and_round_trip() -> None:
    signer = generate_signer("audit.example/checkpoints")
    verifier_text = signer.verifier().to_text()
    match = re.fullmatch(r"audit\.example/checkpoints\+([0-9a-f]{8})\+([A-Za-z0-9+/]{44})",
                         verifier_text)
    assert match is not None
    assert int(match[1], 16) == signer.key_id
    key_data = base64.b64decode(match[2])
    assert key_data[0] == 0x01 and len(key_data) == 33
    assert VerifierKey.parse(verifier_text) == signer.verifier()
    secret = signer.to_text()
    match = re.fullmatch(r"PRIVATE\+KEY\+audit\.example/checkpoints\+([0-9a-f]{8})\+"
                         r"([A-Za-z0-9+/]{44})", secret)
    assert match is not None
    assert int(match[1], 16) == signer.key_id
    assert base64.b64decode(match[2])[0] == 0x01
    assert SignerKey.parse(secret).verifier() == signer.verifier()


def test_a_signer_key_never_shows_its_secret() -> None:
    signer = SignerKey.parse(PETER_SIGNER)
    assert repr(signer) == str(signer) == "SignerKey(name='PeterNeumann', key_id=c74f20a3)"
    assert PETER_SEED_TEXT not in repr(signer)


def test_every_mangled_verifier_key_is_rejected() -> None:
    # As Go's TestNewVerifier: every proper substring, and every single byte changed.
    for start in range(len(PETER_VERIFIER)):
        for end in range(start + 1, len(PETER_VERIFIER) + 1):
            if (start, end) != (0, len(PETER_VERIFIER)):
                with pytest.raises(NoteError):
                    VerifierKey.parse(PETER_VERIFIER[start:end])
    for position in range(len(PETER_VERIFIER)):
        with pytest.raises(NoteError):
            VerifierKey.parse(_bumped(PETER_VERIFIER, position))


def test_verifier_keys_of_the_wrong_length_or_algorithm_are_rejected() -> None:
    # From Go's note_test.go, each with a key ID recomputed to match its bad key data. (Go
    # decodes the first leniently; its last digit has spare bits set, so here it is not
    # even base64.)
    with pytest.raises(NoteError, match="key data"):
        VerifierKey.parse("PeterNeumann+cc469956+"
                          "ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(NoteError, match="key data is 33 bytes, not 32"):
        VerifierKey.parse(f"x+00000000+{base64.b64encode(bytes([1]) + bytes(33)).decode()}")
    with pytest.raises(NoteError, match="unknown algorithm"):
        VerifierKey.parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    with pytest.raises(NoteError, match="key ID does not match"):
        VerifierKey.parse(PETER_VERIFIER.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(NoteError, match="not canonical"):  # spare bits set in the last digit
        VerifierKey.parse(f"x+00000000+{base64.b64encode(bytes(31)).decode()[:-2]}B=")
    # Go reads the key ID with strconv.ParseUint, which takes upper-case hex too.
    assert VerifierKey.parse(PETER_VERIFIER.replace("c74f20a3", "C74F20A3")) == peter()


def test_every_mangled_signer_key_is_rejected_without_echoing_the_secret() -> None:
    # As Go's TestNewSigner; and no error message may carry any piece of the seed text.
    pieces = {PETER_SEED_TEXT[i : i + 6] for i in range(len(PETER_SEED_TEXT) - 5)}

    def rejected(text: str) -> None:
        with pytest.raises(NoteError) as caught:
            SignerKey.parse(text)
        message = str(caught.value)
        assert "\n" not in message
        assert not any(piece in message for piece in pieces), message

    for start in range(len(PETER_SIGNER)):
        for end in range(start + 1, len(PETER_SIGNER) + 1):
            if (start, end) != (0, len(PETER_SIGNER)):
                rejected(PETER_SIGNER[start:end])
    for position in range(len(PETER_SIGNER)):
        rejected(_bumped(PETER_SIGNER, position))
    rejected("PRIVATE+KEY+" + PETER_SEED_TEXT)  # the name and key ID left out
    rejected(PETER_SIGNER.replace("+AYEK", "+AoEK"))  # algorithm byte 0x02


def _bumped(text: str, position: int) -> str:
    return text[:position] + chr(ord(text[position]) + 1) + text[position + 1 :]


@pytest.mark.parametrize("name", [
    "", "two words", "a+b", "tab\there", "line\nbreak", "nbsp\u00a0", "em\u2003space",
    "ideographic\u3000space", "control\x01", "surrogate\ud800",
])
def test_invalid_key_names_are_rejected(name: str) -> None:
    with pytest.raises(NoteError):
        check_key_name(name)
    with pytest.raises(NoteError):
        generate_signer(name)


@pytest.mark.parametrize("name", [
    "PeterNeumann", "audit.example/checkpoints", "ünïcödé", "dash\u2014inside", "x",
])
def test_valid_key_names_are_accepted(name: str) -> None:
    check_key_name(name)
    signer = generate_signer(name)
    assert VerifierKey.parse(signer.verifier().to_text()) == signer.verifier()
    assert open_note(sign_note("hi\n", [signer]), [signer.verifier()]).signed_by == (name,)


# --- Signing ----------------------------------------------------------------------------


def test_sign_then_open_round_trips_with_several_signers() -> None:
    first, second = generate_signer("first.example"), generate_signer("second.example")
    text = "origin.example/t1\n5\n" + base64.b64encode(bytes(32)).decode() + "\n"
    note = sign_note(text, [first, second])
    assert note.startswith(text + "\n\u2014 first.example ")
    assert note.count("\n\u2014 ") == 2 and note.endswith("\n")
    assert open_note(note, [second.verifier(), first.verifier()]) == VerifiedNote(
        text, ("first.example", "second.example")
    )


def test_texts_with_blank_lines_and_dash_lines_split_at_the_last_blank_line() -> None:
    signer = generate_signer("k")
    for text in ("\n", "a\n\n", "a\n\nb\n", "\u2014 k looks like a signature\n", "a\n\n\n"):
        assert open_note(sign_note(text, [signer]), [signer.verifier()]).text == text


@pytest.mark.parametrize(("text", "reason"), [
    ("", "newline"),
    ("no final newline", "newline"),
    ("carriage\r\n", "control character"),
    ("tab\there\n", "control character"),
    ("surrogate \ud800\n", "UTF-8"),
])
def test_sign_rejects_texts_a_note_cannot_carry(text: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        sign_note(text, [generate_signer("k")])


def test_sign_needs_distinct_signers_within_the_limit() -> None:
    signer = generate_signer("k")
    with pytest.raises(NoteError, match="at least one"):
        sign_note(TEXT, [])
    with pytest.raises(NoteError, match="twice"):
        sign_note(TEXT, [signer, SignerKey.parse(signer.to_text())])
    many = [generate_signer(f"k{i}") for i in range(MAX_SIGNATURES + 1)]
    with pytest.raises(NoteError, match="at most"):
        sign_note(TEXT, many)
    note = sign_note(TEXT, many[:MAX_SIGNATURES])
    assert open_note(note, [many[-2].verifier()]).signed_by == (f"k{MAX_SIGNATURES - 1}",)


# --- Opening: the rules of signed-note --------------------------------------------------


def test_unknown_keys_are_ignored_but_one_known_key_must_verify() -> None:
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(SPEC_NOTE, [])
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(SPEC_NOTE, [enoch()])
    # Same name, another key (so another key ID): an unknown key, ignored.
    impostor = generate_signer("PeterNeumann")
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(SPEC_NOTE, [impostor.verifier()])
    both = TEXT + "\n" + PETER_LINE + sign_note(TEXT, [impostor]).split("\n\n")[1]
    assert open_note(both, [peter()]).signed_by == ("PeterNeumann",)


def test_a_known_key_with_a_bad_signature_rejects_the_note() -> None:
    # Go's vector: four base64 digits spliced into Peter's signature (at byte 60).
    raw = PETER_LINE.encode()
    bad_line = (raw[:60] + b"ABCD" + raw[60:]).decode()
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(TEXT + "\n" + bad_line, [peter()])
    with pytest.raises(NoteError, match="invalid signature"):  # even beside a good one
        open_note(TEXT + "\n" + PETER_LINE + bad_line, [peter()])
    # A known key's name and ID in front of another key's signature.
    forged = PETER_LINE.replace("x08go/ZJ", "x08go/ZK")
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(TEXT + "\n" + forged, [peter()])


def test_repeated_and_unknown_signatures_beside_a_good_one() -> None:
    # Go's vector: Peter twice, Enoch twice and a mangled Enoch, with only Peter known.
    raw = ENOCH_LINE.encode()
    mangled_enoch = (raw[:60] + b"ABCD" + raw[60:]).decode()
    note = TEXT + "\n" + PETER_LINE + PETER_LINE + ENOCH_LINE + ENOCH_LINE + mangled_enoch
    assert open_note(note, [peter()]).signed_by == ("PeterNeumann",)


def test_tampered_text_fails_the_known_signature() -> None:
    for tampered in (TEXT.replace("problem,", "problem;"), TEXT + "extra line\n", TEXT[1:]):
        with pytest.raises(NoteError, match="invalid signature"):
            open_note(tampered + "\n" + PETER_LINE, [peter()])


def test_a_changed_signature_byte_fails() -> None:
    encoded = PETER_LINE.split(" ")[2].strip()
    signature = bytearray(base64.b64decode(encoded))
    for position in (4, 30, len(signature) - 1):  # past the key ID, inside the signature
        changed = bytearray(signature)
        changed[position] ^= 0x01
        line = f"\u2014 PeterNeumann {base64.b64encode(changed).decode()}\n"
        with pytest.raises(NoteError, match="invalid signature"):
            open_note(TEXT + "\n" + line, [peter()])
    changed = bytearray(signature)
    changed[0] ^= 0x01  # inside the key ID: now an unknown key
    line = f"\u2014 PeterNeumann {base64.b64encode(changed).decode()}\n"
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(TEXT + "\n" + line, [peter()])


def test_too_many_signature_lines_are_rejected() -> None:
    # Go's vector: 101 copies of a good signature.
    with pytest.raises(NoteError, match="more than 100"):
        open_note(TEXT + "\n" + PETER_LINE * (MAX_SIGNATURES + 1), [peter()])
    assert open_note(TEXT + "\n" + PETER_LINE * MAX_SIGNATURES, [peter()]).signed_by == (
        "PeterNeumann",
    )


@pytest.mark.parametrize(("note", "reason"), [
    # Go's TestOpen "invalid encoded message syntax" cases first.
    (TEXT, "no blank line"),
    (TEXT + "\n", "does not end with a signature line"),
    (TEXT + "\n" + PETER_LINE[:-1], "does not end with a signature line"),
    ("\x01" + SPEC_NOTE, "control character"),
    (TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2p"
     "ZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n", "base64"),
    (SPEC_NOTE + "Unexpected line.\n", "em dash"),
    # And more.
    (SPEC_NOTE.replace("\u2014", "-"), "em dash"),
    (SPEC_NOTE.replace("\u2014 ", "\u2014"), "em dash"),
    (TEXT + "\n\u2014 PeterNeumann\n", "no space"),
    (TEXT + "\n\u2014  x08go/ZJ\n", "key name"),
    (TEXT + "\n\u2014 Peter+Neumann x08go/ZJ\n", "key name"),
    (TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG\n", "base64"),  # no padding
    (TEXT + "\n\u2014 PeterNeumann AAAAAA==\n", "too short"),  # a key ID alone
    (TEXT + "\n" + PETER_LINE.replace("\n", "\r\n"), "control character"),
    (SPEC_NOTE + "\n", "does not end with a signature line"),
    ("surrogate \ud800\n\n" + PETER_LINE, "UTF-8"),
])
def test_malformed_notes_are_rejected(note: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        open_note(note, [peter()])


def test_notes_that_are_not_utf8_are_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(b"\xff" + SPEC_NOTE.encode(), [peter()])


def test_two_different_keys_under_one_name_and_id_are_a_configuration_error() -> None:
    # Colliding the 32-bit ID takes work, so forge the clash with a second instance.
    clash = VerifierKey(peter().name, peter().public_key)
    object.__setattr__(clash, "public_key", enoch().public_key)
    with pytest.raises(NoteError, match="two different verifier keys"):
        open_note(SPEC_NOTE, [peter(), clash])
    assert open_note(SPEC_NOTE, [peter(), peter()]).signed_by == ("PeterNeumann",)
