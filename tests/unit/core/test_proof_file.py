"""Proof files against the RFC 9162 reference of tests/proofs.py: every honest proof is
accepted, and every single lie (a hash, an index, a size, the record, a signature, the
tenant) is refused with a one-line reason that names it."""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from proofs import (
    LOG,
    OTHER_TENANT,
    RECORDS,
    SIGNER,
    STRANGER,
    TENANT,
    Log,
    b64,
    consistency_file,
    encoded,
    inclusion_file,
    note,
)

from audit_service.core.chain import compute_record_hash
from audit_service.core.merkle import ProofError
from audit_service.core.proof_file import ProofFileError, parse_proof_file
from audit_service.core.signed_note import generate_signer, sign_note

SMALL_SIZES = range(1, 71)
LARGE_SIZES = (127, 128, 129, 1000, 1024, 1025)
SAMPLES_PER_LARGE_SIZE = 12
VERIFIERS = (SIGNER.verifier(),)
ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors" / "chain.jsonl"
HASH_DOC = ROOT / "docs" / "hash-chain.md"
SUBPROCESS_TIMEOUT_S = 30

ProofDict = dict[str, Any]
Mutation = Callable[[ProofDict], None]


def check(proof_file: ProofDict, verifiers: tuple[Any, ...] = VERIFIERS) -> str:
    return parse_proof_file(encoded(proof_file)).verify(verifiers)


def refused(proof_file: ProofDict | bytes) -> str:
    data = proof_file if isinstance(proof_file, bytes) else encoded(proof_file)
    with pytest.raises(ProofError) as caught:
        parse_proof_file(data).verify(VERIFIERS)
    reason = str(caught.value)
    assert "\n" not in reason
    return reason


def _samples(size: int) -> list[int]:
    rng = random.Random(size)
    edges = {0, 1, size // 2, size - 2, size - 1}
    return sorted(edges | {rng.randrange(size) for _ in range(SAMPLES_PER_LARGE_SIZE)})


def _flipped(encoded_hash: str) -> str:
    raw = bytearray(base64.b64decode(encoded_hash))
    raw[7] ^= 0x20
    return b64(bytes(raw))


# --- Honest proofs ----------------------------------------------------------------------


@pytest.mark.parametrize("size", SMALL_SIZES)
def test_every_inclusion_proof_of_small_trees_is_accepted(size: int) -> None:
    for index in range(size):
        assert check(inclusion_file(index, size)) == (
            f"inclusion of tenant {TENANT!r} sequence {index} in tree size {size}: "
            f"record_hash {RECORDS[index]['record_hash']} is leaf {index} of the signed root "
            f"{b64(LOG.root(size))}")


@pytest.mark.parametrize("new_size", SMALL_SIZES)
def test_every_consistency_proof_between_small_trees_is_accepted(new_size: int) -> None:
    for old_size in range(1, new_size + 1):
        assert check(consistency_file(old_size, new_size)) == (
            f"consistency of tenant {TENANT!r} tree size {old_size} -> {new_size}: the signed "
            f"root {b64(LOG.root(new_size))} extends the signed root "
            f"{b64(LOG.root(old_size))}, nothing before leaf {old_size} rewritten")


@pytest.mark.parametrize("size", LARGE_SIZES)
def test_sampled_proofs_of_larger_trees_are_accepted(size: int) -> None:
    for index in _samples(size):
        assert check(inclusion_file(index, size)).startswith(f"inclusion of tenant {TENANT!r} "
                                                             f"sequence {index} in tree size")
        assert check(consistency_file(index + 1, size)).startswith(
            f"consistency of tenant {TENANT!r} tree size {index + 1} -> {size}:")


def test_records_with_every_awkward_rendering_are_proven() -> None:
    """The record travels as a parsed JSON object: big integers, floats, astral characters
    and escapes must re-serialise to exactly the text that was hashed."""
    vectors = Log(VECTORS.read_text(encoding="ascii").splitlines())
    size = len(vectors.records)
    for index in range(size):
        assert "is leaf" in check(inclusion_file(index, size, vectors))


def test_a_rotated_key_signs_the_newer_checkpoint() -> None:
    rotated = generate_signer("audit-proofs-2027")
    proof = consistency_file(40, 70)
    proof["new_checkpoint"] = note(70, signer=rotated)
    assert refused(proof).endswith("new_checkpoint: signature not accepted: note has no "
                                   "signature from a known key")
    assert "extends" in check(proof, (SIGNER.verifier(), rotated.verifier()))


def test_signatures_of_unknown_keys_beside_a_known_one_are_ignored() -> None:
    proof = inclusion_file(3, 9)
    text = proof["checkpoint"].rpartition("\n\n")[0] + "\n"
    proof["checkpoint"] = sign_note(text, [STRANGER, SIGNER])
    assert "is leaf 3" in check(proof)


# --- Lies about an inclusion ------------------------------------------------------------

INCLUSION_INDEX, INCLUSION_SIZE = 5, 13
INCLUSION_PATH_LENGTH = len(inclusion_file(INCLUSION_INDEX, INCLUSION_SIZE)["inclusion_proof"])


def _set(**fields: Any) -> Mutation:
    return lambda proof: proof.update(fields)


def _record(**fields: Any) -> Mutation:
    return lambda proof: proof["record"].update(fields)


def _rehashed(**fields: Any) -> Mutation:
    def mutate(proof: ProofDict) -> None:
        proof["record"].update(fields)
        proof["record"]["record_hash"] = compute_record_hash(proof["record"])
    return mutate


def _hash_changed(field: str, position: int) -> Mutation:
    def mutate(proof: ProofDict) -> None:
        proof[field][position] = _flipped(proof[field][position])
    return mutate


def _note_edited(field: str, old: str, new: str) -> Mutation:
    def mutate(proof: ProofDict) -> None:
        assert old in proof[field]
        proof[field] = proof[field].replace(old, new, 1)
    return mutate


INCLUSION_LIES: list[tuple[str, Mutation, str]] = [
    *[(f"proof hash {i} changed", _hash_changed("inclusion_proof", i), "leads to root")
      for i in range(INCLUSION_PATH_LENGTH)],
    ("proof truncated", lambda p: p["inclusion_proof"].pop(), "is too short"),
    ("proof extended", lambda p: p["inclusion_proof"].append(b64(LOG.root(13))), "too long"),
    ("proof empty", _set(inclusion_proof=[]), "is too short"),
    ("proof reversed", lambda p: p["inclusion_proof"].reverse(), "leads to root"),
    ("leaf index changed", _set(leaf_index=6),
     "leaf_index 6 is not the sequence_number"),
    ("sequence and leaf index changed", _set(leaf_index=6, sequence_number=6),
     "sequence gap: expected sequence 6, found sequence 5"),
    ("another record under its own index", _set(leaf_index=6, sequence_number=6,
                                                record=copy.deepcopy(RECORDS[6])),
     "inclusion proof for leaf 6 in a tree of size 13 leads to root"),
    ("leaf index past the tree", _set(leaf_index=13, sequence_number=13,
                                      record=copy.deepcopy(RECORDS[13])),
     "leaf index 13 is outside a tree of size 13"),
    ("tree size changed", _set(tree_size=14),
     "checkpoint is signed for tree size 13, the file's tree_size is 14"),
    ("tree size and checkpoint changed", _set(tree_size=14, checkpoint=note(14)),
     "inclusion proof for leaf 5 in a tree of size 14"),
    ("record content changed", _record(actor_id="mallory"), "hash mismatch"),
    ("record_hash changed", _record(record_hash="0" * 64), "hash mismatch"),
    ("record changed and rehashed", _rehashed(actor_id="mallory"), "leads to root"),
    ("record of another tenant", _rehashed(tenant_id=OTHER_TENANT), "tenant mismatch"),
    ("checkpoint signed by another key", _set(checkpoint=note(13, signer=STRANGER)),
     "checkpoint: signature not accepted: note has no signature from a known key"),
    ("checkpoint of another tenant", _set(checkpoint=note(13, tenant=OTHER_TENANT)),
     f"checkpoint: origin 'audit.example.com/{OTHER_TENANT}' is not <origin>/{TENANT}"),
    ("file of another tenant", _set(tenant_id=OTHER_TENANT), f"it names tenant {TENANT!r}"),
    ("checkpoint size edited", _note_edited("checkpoint", "\n13\n", "\n14\n"),
     "signature not accepted: invalid signature for key audit-proofs+"),
    ("checkpoint root edited", _note_edited("checkpoint", b64(LOG.root(13)), b64(LOG.root(12))),
     "signature not accepted: invalid signature for key audit-proofs+"),
    ("checkpoint without signatures", lambda p: p.update(
        checkpoint=p["checkpoint"].rpartition("\n\n")[0] + "\n"), "signature not accepted"),
    ("checkpoint of another root, signed", _set(checkpoint=note(13, root=LOG.root(12))),
     "leads to root"),
]


@pytest.mark.parametrize(("mutate", "reason"), [(m, r) for _, m, r in INCLUSION_LIES],
                         ids=[name for name, _, _ in INCLUSION_LIES])
def test_an_inclusion_proof_with_one_lie_is_refused(mutate: Mutation, reason: str) -> None:
    proof = inclusion_file(INCLUSION_INDEX, INCLUSION_SIZE)
    mutate(proof)
    refusal = refused(proof)
    assert refusal.startswith(f"inclusion of tenant {proof['tenant_id']!r} sequence "
                              f"{proof['sequence_number']} in tree size {proof['tree_size']}: ")
    assert reason in refusal


# --- Lies about consistency -------------------------------------------------------------

CONSISTENCY_CASES = [(5, 13), (4, 13), (1, 70), (64, 65)]
"""Old sizes that are and are not powers of two (RFC 9162 leaves out the old root when the
old tree is a perfect subtree)."""
OTHER_ROOT = bytes(range(32))


def _generic_consistency_lies(old: int, new: int) -> list[tuple[str, Mutation, str]]:
    length = len(consistency_file(old, new)["consistency_proof"])
    return [
        *[(f"{old}-{new} proof hash {i} changed", _hash_changed("consistency_proof", i),
           "proof leads to") for i in range(length)],
        (f"{old}-{new} proof truncated", lambda p: p["consistency_proof"].pop(),
         "the consistency proof is " + ("empty" if length == 1 else "too short")),
        (f"{old}-{new} proof extended",
         lambda p: p["consistency_proof"].append(b64(OTHER_ROOT)), "too long"),
        (f"{old}-{new} proof empty", _set(consistency_proof=[]), "the consistency proof is empty"),
    ]


def _swapped(proof: ProofDict) -> None:
    proof.update(old_size=proof["new_size"], new_size=proof["old_size"],
                 old_checkpoint=proof["new_checkpoint"], new_checkpoint=proof["old_checkpoint"])


CONSISTENCY_LIES: list[tuple[int, int, str, Mutation, str]] = [
    *[(old, new, *lie) for old, new in CONSISTENCY_CASES
      for lie in _generic_consistency_lies(old, new)],
    (5, 13, "old size changed", _set(old_size=6),
     "old_checkpoint is signed for tree size 5, the file's old_size is 6"),
    (5, 13, "new size changed", _set(new_size=14),
     "new_checkpoint is signed for tree size 13, the file's new_size is 14"),
    (5, 13, "old size and checkpoint changed", _set(old_size=6, old_checkpoint=note(6)),
     "tree sizes 6 -> 13: the consistency proof is too long"),
    (5, 13, "sizes swapped", _swapped, "tree sizes 13 -> 5: the new tree is smaller"),
    (5, 13, "old checkpoint signed by another key",
     _set(old_checkpoint=note(5, signer=STRANGER)), "old_checkpoint: signature not accepted"),
    (5, 13, "new checkpoint signed by another key",
     _set(new_checkpoint=note(13, signer=STRANGER)), "new_checkpoint: signature not accepted"),
    (5, 13, "old checkpoint of another tenant",
     _set(old_checkpoint=note(5, tenant=OTHER_TENANT)), "old_checkpoint: origin"),
    (5, 13, "new checkpoint edited", _note_edited("new_checkpoint", "\n13\n", "\n12\n"),
     "new_checkpoint: signature not accepted: invalid signature"),
    (5, 13, "new tree rewritten, signed", _set(new_checkpoint=note(13, root=OTHER_ROOT)),
     "proof leads to new root"),
    (5, 13, "old tree rewritten, signed", _set(old_checkpoint=note(5, root=OTHER_ROOT)),
     "proof leads to old root"),
    (13, 13, "equal sizes with a proof", _set(consistency_proof=[b64(OTHER_ROOT)]),
     "equal sizes need an empty proof"),
    (13, 13, "equal sizes, another root", _set(old_checkpoint=note(13, root=OTHER_ROOT)),
     "equal sizes with different roots"),
]


@pytest.mark.parametrize(("old", "new", "mutate", "reason"),
                         [(o, n, m, r) for o, n, _, m, r in CONSISTENCY_LIES],
                         ids=[name for _, _, name, _, _ in CONSISTENCY_LIES])
def test_a_consistency_proof_with_one_lie_is_refused(old: int, new: int, mutate: Mutation,
                                                     reason: str) -> None:
    proof = consistency_file(old, new)
    mutate(proof)
    refusal = refused(proof)
    assert refusal.startswith(f"consistency of tenant {TENANT!r} tree size {proof['old_size']}"
                              f" -> {proof['new_size']}: ")
    assert reason in refusal


# --- Files that are not proof files -----------------------------------------------------

MALFORMED: list[tuple[str, Callable[[], ProofDict], Mutation, str]] = [
    *[(f"inclusion without {field}", lambda: inclusion_file(2, 5),
       (lambda p, f=field: p.pop(f)), f"inclusion proof file: missing fields ['{field}']")
      for field in ("tenant_id", "sequence_number", "tree_size", "leaf_index", "record",
                    "checkpoint")],
    *[(f"consistency without {field}", lambda: consistency_file(2, 5),
       (lambda p, f=field: p.pop(f)), f"consistency proof file: missing fields ['{field}']")
      for field in ("tenant_id", "old_size", "new_size", "old_checkpoint", "new_checkpoint")],
    ("no proof at all", lambda: inclusion_file(2, 5), lambda p: p.pop("inclusion_proof"),
     "not a proof file: it must hold exactly one of inclusion_proof and consistency_proof"),
    ("both kinds", lambda: inclusion_file(2, 5), _set(consistency_proof=[]),
     "exactly one of inclusion_proof and consistency_proof"),
    ("an extra field", lambda: consistency_file(2, 5), _set(comment="trust me"),
     "consistency proof file: unexpected fields ['comment']"),
    ("size as a string", lambda: inclusion_file(2, 5), _set(tree_size="5"),
     "tree_size is not an integer in [1, 2**64 - 1]: '5'"),
    ("size as a boolean", lambda: consistency_file(1, 5), _set(old_size=True),
     "old_size is not an integer in [1, 2**64 - 1]: True"),
    ("size as a float", lambda: consistency_file(2, 5), _set(new_size=5.0),
     "new_size is not an integer"),
    ("size zero", lambda: inclusion_file(2, 5), _set(tree_size=0), "tree_size is not an integer"),
    ("size beyond uint64", lambda: inclusion_file(2, 5), _set(tree_size=2**64),
     "tree_size is not an integer"),
    ("negative sequence", lambda: inclusion_file(2, 5), _set(sequence_number=-1),
     "sequence_number is not an integer in [0,"),
    ("tenant id with a slash", lambda: inclusion_file(2, 5), _set(tenant_id="a/b"),
     "tenant_id is not a tenant id: 'a/b'"),
    ("proof not a list", lambda: inclusion_file(2, 5), _set(inclusion_proof="AAAA"),
     "inclusion_proof is not a list of base64 hashes"),
    ("hash not a string", lambda: inclusion_file(2, 5), _set(inclusion_proof=[7]),
     "inclusion_proof[0] is not the base64 of a 32-byte hash: 7"),
    ("hash not base64", lambda: consistency_file(2, 5),
     lambda p: p["consistency_proof"].insert(1, "!" * 44),
     "consistency_proof[1] is not standard base64"),
    ("hash without padding", lambda: inclusion_file(2, 5),
     lambda p: p["inclusion_proof"].__setitem__(0, p["inclusion_proof"][0].rstrip("=")),
     "inclusion_proof[0] is not standard base64"),
    ("hash with spare bits set", lambda: inclusion_file(2, 5),
     _set(inclusion_proof=[b64(bytes(32))[:-2] + "B="]),
     "inclusion_proof[0] is not canonical standard base64"),
    ("hash of 31 bytes", lambda: inclusion_file(2, 5), _set(inclusion_proof=[b64(bytes(31))]),
     "inclusion_proof[0] is not the base64 of a 32-byte hash"),
    ("hash of 33 bytes", lambda: consistency_file(2, 5),
     _set(consistency_proof=[b64(bytes(33))]), "is not the base64 of a 32-byte hash"),
    ("checkpoint not a string", lambda: inclusion_file(2, 5), _set(checkpoint={"note": "x"}),
     "checkpoint is not a signed note (a string)"),
    ("record not an object", lambda: inclusion_file(2, 5), _set(record="{}"),
     "record is not a JSON object"),
    ("record with an extra field", lambda: inclusion_file(2, 5), _record(kafka_offset=7),
     "record: unexpected fields ['kafka_offset']"),
    ("record without a field", lambda: inclusion_file(2, 5),
     lambda p: p["record"].pop("actor_id"), "record: missing fields ['actor_id']"),
]


@pytest.mark.parametrize(("make", "mutate", "reason"), [(b, m, r) for _, b, m, r in MALFORMED],
                         ids=[name for name, _, _, _ in MALFORMED])
def test_a_malformed_proof_file_is_refused_naming_the_field(
        make: Callable[[], ProofDict], mutate: Mutation, reason: str) -> None:
    proof = make()
    mutate(proof)
    assert reason in refused(proof)


def test_a_duplicate_key_is_refused() -> None:
    """Two readers of a file with a key twice could see two different proofs."""
    text = encoded(inclusion_file(2, 5)).replace(b'"tree_size": 5', b'"tree_size": 5, '
                                                 b'"tree_size": 6', 1)
    assert "duplicate key 'tree_size' in a JSON object" in refused(text)


def test_json_constants_are_refused() -> None:
    text = encoded(inclusion_file(2, 5)).replace(b'"tree_size": 5', b'"tree_size": NaN', 1)
    assert "NaN is not JSON" in refused(text)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "not JSON (Expecting value at line 1 column 1)"),
    (b"\xff{}", "not UTF-8 (invalid start byte at byte 0)"),
    (b'{"tenant_id": ', "not JSON"),
    (b"{} trailing junk", "not JSON (Extra data at line 1 column 4)"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b'{"tree_size": ' + b"9" * 5000 + b"}", "an integer far too long"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_what_is_not_a_json_object_is_not_a_proof_file(data: bytes, reason: str) -> None:
    with pytest.raises(ProofFileError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_proof_file(data)


def test_the_checks_do_not_depend_on_the_json_layout() -> None:
    proof = inclusion_file(4, 9)
    compact = json.dumps(proof, separators=(",", ":"), ensure_ascii=False).encode()
    assert parse_proof_file(compact).verify(VERIFIERS) == check(proof)


# --- The programs printed in docs/hash-chain.md ----------------------------------------


def _documented_program(marker: str) -> str:
    """The fenced code block in docs/hash-chain.md whose first line names `marker`."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", HASH_DOC.read_text(), flags=re.S):
        if marker in block.splitlines()[0]:
            return block
    raise AssertionError(f"no code block starting with {marker!r} in {HASH_DOC}")


def _mutated(make: Callable[[], ProofDict], mutate: Mutation) -> Callable[[], ProofDict]:
    def build() -> ProofDict:
        proof = make()
        mutate(proof)
        return proof
    return build


HONEST = [lambda: inclusion_file(0, 1), lambda: inclusion_file(5, 13),
          lambda: inclusion_file(64, 65), lambda: consistency_file(5, 13),
          lambda: consistency_file(4, 13), lambda: consistency_file(13, 13)]
TAMPERED = [
    _mutated(lambda: inclusion_file(5, 13), _hash_changed("inclusion_proof", 2)),
    _mutated(lambda: inclusion_file(5, 13), _record(record_hash=RECORDS[6]["record_hash"])),
    _mutated(lambda: inclusion_file(5, 13), _set(leaf_index=6, sequence_number=6)),
    _mutated(lambda: inclusion_file(5, 13), _set(tree_size=14)),
    _mutated(lambda: inclusion_file(5, 13), _set(checkpoint=note(13, signer=STRANGER))),
    _mutated(lambda: inclusion_file(5, 13), _set(checkpoint=note(13, tenant=OTHER_TENANT))),
    _mutated(lambda: inclusion_file(5, 13), _note_edited("checkpoint", "\n13\n", "\n14\n")),
    _mutated(lambda: consistency_file(4, 13), _hash_changed("consistency_proof", 0)),
    _mutated(lambda: consistency_file(5, 13), lambda p: p["consistency_proof"].pop()),
    _mutated(lambda: consistency_file(5, 13), _set(new_checkpoint=note(13, root=OTHER_ROOT))),
    _mutated(lambda: consistency_file(5, 13), _swapped),
    _mutated(lambda: consistency_file(13, 13), _set(consistency_proof=[b64(OTHER_ROOT)])),
]


@pytest.mark.parametrize(("interpreter", "marker"), [
    (sys.executable, "verify_proof.py"),
    ("node", "verify_proof.js"),
], ids=["python", "node"])
def test_the_documented_programs_check_both_kinds_of_proof(
        tmp_path: Path, interpreter: str, marker: str) -> None:
    executable = shutil.which(interpreter)
    if executable is None:
        pytest.skip(f"{interpreter} is not installed")
    program = tmp_path / marker
    program.write_text(_documented_program(marker))
    key = tmp_path / "audit-proofs.pub"
    key.write_text(SIGNER.verifier().to_text() + "\n")
    proof_path = tmp_path / "proof.json"

    def run(proof: ProofDict) -> subprocess.CompletedProcess[str]:
        proof_path.write_bytes(encoded(proof))
        return subprocess.run([executable, str(program), str(proof_path), str(key)],
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)

    for make in HONEST:
        proof = make()
        done = run(proof)
        assert done.returncode == 0, (proof, done.stdout + done.stderr)
        assert done.stdout.startswith("OK: ")
    for make in TAMPERED:
        proof = make()
        done = run(proof)
        assert done.returncode == 1, (proof, done.stdout + done.stderr)
        assert done.stderr.startswith("INVALID: "), done.stderr


def test_the_documented_python_program_checks_the_record_itself(tmp_path: Path) -> None:
    program = tmp_path / "verify_proof.py"
    program.write_text(_documented_program("verify_proof.py"))
    key = tmp_path / "audit-proofs.pub"
    key.write_text(SIGNER.verifier().to_text() + "\n")
    proof = inclusion_file(5, 13)
    proof["record"]["actor_id"] = "mallory"
    (tmp_path / "proof.json").write_bytes(encoded(proof))
    done = subprocess.run([sys.executable, str(program), str(tmp_path / "proof.json"), str(key)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert (done.returncode, done.stderr) == (
        1, "INVALID: the record does not hash to its record_hash\n")
