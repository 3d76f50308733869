"""`ingest.pipeline.CommitOrder`: the committer thread must never commit batch k before k-1.

Real threads, no timing assumptions beyond bounded waits: a batch waiting for its turn is
observed blocked, then released by the commit of its predecessor or by the loop giving up.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from audit_service.ingest.pipeline import CommitOrder

BLOCKED_S = 0.3
"""How long a waiter must stay blocked to count as waiting for its turn."""


def test_the_first_batch_does_not_wait() -> None:
    assert CommitOrder().wait_turn(1) is True


def test_a_batch_waits_until_its_predecessor_is_committed() -> None:
    order = CommitOrder()
    with ThreadPoolExecutor(max_workers=1) as pool:
        turn = pool.submit(order.wait_turn, 3)
        order.committed(1)
        time.sleep(BLOCKED_S)
        assert not turn.done(), "batch 3 went ahead while batch 2 was not committed"
        order.committed(2)
        assert turn.result(timeout=5) is True


def test_a_predecessor_committed_by_the_loop_after_a_failure_releases_the_next() -> None:
    """The committer failed batch 1; the loop retried and committed it: batch 2 may go."""
    order = CommitOrder()
    with ThreadPoolExecutor(max_workers=1) as pool:
        turn = pool.submit(order.wait_turn, 2)
        time.sleep(BLOCKED_S)
        assert not turn.done(), "batch 2 went ahead while batch 1 was not committed"
        order.committed(1)
        assert turn.result(timeout=5) is True


def test_giving_up_releases_every_waiting_batch_without_its_turn() -> None:
    order = CommitOrder()
    with ThreadPoolExecutor(max_workers=2) as pool:
        waiting = [pool.submit(order.wait_turn, number) for number in (2, 3)]
        order.abandon()
        assert [turn.result(timeout=5) for turn in waiting] == [False, False]
    assert order.wait_turn(1) is False
