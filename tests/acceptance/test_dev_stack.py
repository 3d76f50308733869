"""Acceptance: `audit-service dev` (what `make run` starts) ends with a verify of the
chains and their signed checkpoints and a reconcile of the topic with the store, all clean.

It starts its own embedded PostgreSQL and Tansu broker, like a newcomer's first run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from support import scratch_dir

DEV_TIMEOUT_S = 180.0
"""Servers' start-up, the first group join, 6 s of events, the drain, verify, reconcile."""


def test_the_dev_stack_ends_with_a_clean_verify_and_reconcile() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    with scratch_dir("audit-dev-") as state:
        result = subprocess.run(
            [sys.executable, "-m", "audit_service", "dev", "--state-dir", str(state / "dev"),
             "--duration", "6", "--health-port", "0", "--rate", "30"],
            env=env, cwd=state, capture_output=True, text=True, timeout=DEV_TIMEOUT_S,
            check=False)

    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    [summary] = [line for line in lines if line.startswith("summary: ")]
    assert "| verify: OK (" in summary and "| rejected 1 |" in summary
    verified = re.search(r"verify: OK \((\d+) checkpoints verified\)", summary)
    assert verified and int(verified.group(1)) >= 3, summary  # one per tenant at least
    assert lines[-1].startswith("reconcile: OK, 4 partitions, "), lines[-3:]
    assert "1 rejected, 0 redelivered), 0 pending" in lines[-1]
