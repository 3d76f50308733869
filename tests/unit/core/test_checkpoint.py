"""Checkpoint texts (C2SP tlog-checkpoint) and the service's per-tenant origin lines."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit_service.core.chain import TENANT_ID_PATTERN
from audit_service.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    format_checkpoint,
    parse_checkpoint,
    tenant_from_origin,
    tenant_origin,
)
from audit_service.core.merkle import (
    EMPTY_ROOT,
    MAX_TREE_SIZE,
    CompactRange,
    NodeId,
    consistency_proof,
    leaf_hash,
    verify_consistency,
)
from audit_service.core.signed_note import generate_signer, open_note, sign_note

# The example in C2SP tlog-checkpoint (its signature's key is not published).
SPEC_EXAMPLE = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
# golang.org/x/mod/sumdb/tlog note_test.go TestFormatTree: the root is its
# RecordHash("hello world"), which is RFC 9162's leaf hash.
GO_TREE = "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n"
ROOT = hashlib.sha256(b"root").digest()
ROOT_LINE = base64.b64encode(ROOT).decode()


def test_the_tlog_checkpoint_example_parses_and_formats_back() -> None:
    checkpoint = parse_checkpoint(SPEC_EXAMPLE)
    assert checkpoint == Checkpoint(
        "example.com/behind-the-sofa", 20852163,
        base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    assert format_checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root) == SPEC_EXAMPLE


def test_the_go_sumdb_tree_vector() -> None:
    assert format_checkpoint("go.sum database tree", 123456789012,
                             leaf_hash(b"hello world")) == GO_TREE
    assert parse_checkpoint(GO_TREE).root == leaf_hash(b"hello world")


def test_three_lines_each_ending_in_a_newline() -> None:
    assert format_checkpoint("audit.example/t-1", 5, ROOT) == (
        f"audit.example/t-1\n5\n{ROOT_LINE}\n"
    )
    assert format_checkpoint("o", 0, EMPTY_ROOT) == (
        "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    )
    assert format_checkpoint("o", MAX_TREE_SIZE, ROOT).split("\n")[1] == str(2**64 - 1)


def test_extension_lines_are_kept_in_order() -> None:
    text = f"o\n7\n{ROOT_LINE}\nfirst extension\nsecond\n"
    assert parse_checkpoint(text).extensions == ("first extension", "second")


@pytest.mark.parametrize(("origin", "size", "root"), [
    ("", 1, ROOT), ("two\nlines", 1, ROOT), ("tab\tin origin", 1, ROOT), ("o", -1, ROOT),
    ("o", MAX_TREE_SIZE + 1, ROOT), ("o", 1, ROOT[:31]), ("o", 1, ROOT + b"\x00"),
])
def test_format_rejects_what_no_checkpoint_can_hold(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(CheckpointError):
        format_checkpoint(origin, size, root)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "newline"),
    (f"o\n1\n{ROOT_LINE}", "newline"),  # the root line unterminated
    ("o\n1\n", "needs origin, tree size and root hash"),
    (f"\n1\n{ROOT_LINE}\n", "origin line is empty"),
    (f"o\n01\n{ROOT_LINE}\n", "leading zeros"),
    (f"o\n00\n{ROOT_LINE}\n", "leading zeros"),
    (f"o\n-1\n{ROOT_LINE}\n", "decimal"),
    (f"o\n+1\n{ROOT_LINE}\n", "decimal"),
    (f"o\n 1\n{ROOT_LINE}\n", "decimal"),
    (f"o\n1_000\n{ROOT_LINE}\n", "decimal"),
    (f"o\n\uff11\n{ROOT_LINE}\n", "decimal"),  # FULLWIDTH DIGIT ONE, which int() takes
    (f"o\n0xabcdef\n{ROOT_LINE}\n", "decimal"),  # from Go's TestParseTree
    (f"o\n\n{ROOT_LINE}\n", "decimal"),
    (f"o\n{2**64}\n{ROOT_LINE}\n", "larger than"),
    ("o\n1\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBTOOBIG=\n", "root hash"),  # Go's
    (f"o\n1\n{base64.b64encode(ROOT + b'x').decode()}\n", "33 bytes, not 32"),
    ("o\n1\nThisIsn'tBase64\n", "base64"),  # from transparency-dev/formats
    (f"o\n1\n{ROOT_LINE.rstrip('=')}\n", "base64"),  # padding left out
    (f"o\n1\n{ROOT_LINE[:-2]}B=\n", "canonical"),  # spare bits set
    (f"o\n1\n{base64.b64encode(ROOT[:16]).decode()}\n", "bytes, not 32"),
    (f"o\n1\n{ROOT_LINE}\n\n", "extension line is empty"),
    (f"o\n1\n{ROOT_LINE}\next\n\n", "extension line is empty"),
    (f"o\r\n1\n{ROOT_LINE}\n", "control character"),
])
def test_parse_rejects_malformed_bodies(text: str, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        parse_checkpoint(text)


@given(
    st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1),
    st.integers(0, MAX_TREE_SIZE),
    st.binary(min_size=32, max_size=32),
)
def test_format_then_parse_round_trips(origin: str, size: int, root: bytes) -> None:
    assert parse_checkpoint(format_checkpoint(origin, size, root)) == Checkpoint(
        origin, size, root
    )


# --- The service's origin line ----------------------------------------------------------


@pytest.mark.parametrize("tenant_id", ["tenant-1", "a", ".", "..", "A.b_c:d-9", "x" * 128])
def test_tenant_origins_round_trip(tenant_id: str) -> None:
    line = tenant_origin("audit.example/prod", tenant_id)
    assert line == f"audit.example/prod/{tenant_id}"
    assert tenant_from_origin("audit.example/prod", line) == tenant_id


@pytest.mark.parametrize("tenant_id", [
    "", "x" * 129, "a/b", "a b", "tenant+1", "t\n", "t\r", "t\x00", "t\u00e9", "t\uff11",
])
def test_invalid_tenant_ids_are_rejected(tenant_id: str) -> None:
    with pytest.raises(CheckpointError, match="tenant id"):
        tenant_origin("audit.example", tenant_id)
    with pytest.raises(CheckpointError, match="tenant id"):
        tenant_from_origin("audit.example", f"audit.example/{tenant_id}")


@pytest.mark.parametrize("origin", ["", "two words", "a+b", "tab\t", "new\nline", "slash/"])
def test_invalid_service_origins_are_rejected(origin: str) -> None:
    with pytest.raises(CheckpointError, match="origin"):
        tenant_origin(origin, "t")
    with pytest.raises(CheckpointError, match="origin"):
        tenant_from_origin(origin, f"{origin}/t")


@pytest.mark.parametrize("line", [
    "other.example/t", "audit.example", "audit.example/", "audit.examplet",
    "audit.example/t/u", "audit.example//t", "x/audit.example/t",
])
def test_origin_lines_of_other_logs_or_shapes_are_rejected(line: str) -> None:
    with pytest.raises(CheckpointError):
        tenant_from_origin("audit.example", line)


def test_tenant_rule_agrees_with_the_event_schema() -> None:
    schema = re.compile(TENANT_ID_PATTERN)
    samples = ["t", ".", "..", "A.b_c:d-9", "x" * 128, "x" * 129, "", "a/b", "a b", "t+",
               "t\u00e9", "\u0661"]
    for sample in samples:
        checked = True
        try:
            tenant_origin("o", sample)
        except CheckpointError:
            checked = False
        assert checked == bool(schema.fullmatch(sample)), sample


# --- End to end: a signed checkpoint a verifier can check -------------------------------


def test_a_signed_tenant_checkpoint_verifies_and_extends() -> None:
    signer = generate_signer("audit.example")
    compact, store, notes = CompactRange(), {}, {}
    for sequence in range(10):
        record_hash = hashlib.sha256(f"record {sequence}".encode()).hexdigest()
        for node in compact.append(leaf_hash(bytes.fromhex(record_hash))):
            store[NodeId(node.level, node.index)] = node.hash
        body = format_checkpoint(tenant_origin(signer.name, "tenant-1"), compact.size,
                                 compact.root())
        notes[compact.size] = sign_note(body, [signer])
    old = parse_checkpoint(open_note(notes[3], [signer.verifier()]).text)
    new = parse_checkpoint(open_note(notes[10], [signer.verifier()]).text)
    assert tenant_from_origin(signer.name, new.origin) == "tenant-1"
    proof = consistency_proof(old.size, new.size, lambda level, index: store[NodeId(level, index)])
    verify_consistency(old.size, new.size, old.root, new.root, proof)
