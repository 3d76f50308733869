"""Acceptance: `audit-service keygen` and the usage errors of `verify --checkpoints`, as
subprocesses (exit codes, one-line errors, file modes). Nothing here needs a server."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from audit_service.core.signed_note import VerifierKey, open_note, sign_note
from audit_service.ingest.checkpointing import load_signer

CLI_TIMEOUT_S = 60.0


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    return subprocess.run(
        [sys.executable, "-m", "audit_service", *args], env=env, cwd=cwd, text=True,
        capture_output=True, timeout=CLI_TIMEOUT_S, check=False,
        preexec_fn=lambda: os.umask(0))  # the modes must not depend on the caller's umask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_a_secret_key_and_its_verifier_key(tmp_path: Path) -> None:
    result = _cli(tmp_path, "keygen", "--name", "audit-prod-2026", "--out", "keys")  # no dir
    assert result.returncode == 2
    assert result.stderr.startswith("audit-service: error: cannot create keys/audit-prod-2026.key")
    (tmp_path / "keys").mkdir()

    result = _cli(tmp_path, "keygen", "--name", "audit-prod-2026", "--out", "keys")

    assert result.returncode == 0, result.stderr
    key, pub = tmp_path / "keys/audit-prod-2026.key", tmp_path / "keys/audit-prod-2026.pub"
    assert (_mode(key), _mode(pub)) == (0o600, 0o644)
    verifier_text = pub.read_text()
    assert verifier_text.endswith("\n") and verifier_text.count("\n") == 1
    assert result.stdout.splitlines() == [
        "signer key: keys/audit-prod-2026.key (mode 0600, secret: set checkpoint_key_file "
        "to it)",
        "verifier key: keys/audit-prod-2026.pub",
        verifier_text.strip(),
    ]
    assert key.read_text().startswith("PRIVATE+KEY+audit-prod-2026+")
    signer = load_signer(str(key))
    verifier = VerifierKey.parse(verifier_text.strip())
    assert open_note(sign_note("text\n", [signer]), [verifier]).signed_by == ("audit-prod-2026",)


def test_keygen_never_overwrites_either_file(tmp_path: Path) -> None:
    assert _cli(tmp_path, "keygen", "--name", "k", "--out", ".").returncode == 0
    before = (tmp_path / "k.key").read_bytes(), (tmp_path / "k.pub").read_bytes()

    again = _cli(tmp_path, "keygen", "--name", "k", "--out", ".")

    assert again.returncode == 2
    assert again.stderr == "audit-service: error: k.key exists: keygen never overwrites a key\n"
    assert ((tmp_path / "k.key").read_bytes(), (tmp_path / "k.pub").read_bytes()) == before
    (tmp_path / "j.pub").write_text("someone else's\n")
    result = _cli(tmp_path, "keygen", "--name", "j", "--out", ".")
    assert result.returncode == 2 and "j.pub exists" in result.stderr
    assert not (tmp_path / "j.key").exists()


@pytest.mark.parametrize(("name", "rule"), [
    ("", "key name is empty"),
    ("two words", "contains whitespace, '+' or a control character"),
    ("a+b", "contains whitespace, '+' or a control character"),
    ("../etc", "contains '/' (it names files)"),
])
def test_keygen_refuses_a_bad_key_name_naming_the_rule(tmp_path: Path, name: str,
                                                       rule: str) -> None:
    result = _cli(tmp_path, "keygen", "--name", name, "--out", ".")

    assert result.returncode == 2
    assert result.stderr.startswith("audit-service: error: --name: ")
    assert rule in result.stderr and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoints", "sink"], "--checkpoints needs --public-key FILE"),
    (["--public-key", "k.pub"], "--public-key needs --checkpoints"),
    (["--checkpoints", "sink", "--public-key", "k.key"], "holds a signer key (a secret)"),
    (["--checkpoints", "sink", "--public-key", "k.pub", "--expect-previous", "a" * 64],
     "--checkpoints needs complete exports (from genesis): drop --expect-previous"),
    (["--checkpoints", "nowhere", "--public-key", "k.pub"], "nowhere: no such file"),
])
def test_verify_checkpoints_usage_errors_exit_2(tmp_path: Path, args: list[str],
                                                message: str) -> None:
    assert _cli(tmp_path, "keygen", "--name", "k", "--out", ".").returncode == 0
    (tmp_path / "sink").mkdir()
    (tmp_path / "sink/checkpoints-t.jsonl").write_text("")
    (tmp_path / "export.jsonl").write_text("")

    result = _cli(tmp_path, "verify", "--file", "export.jsonl", *args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
