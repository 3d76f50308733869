"""Validate and render batches in a worker process, beside the daemon's GIL.

Validation and rendering (`batch.prepare_batch`) are pure CPU work, most of the Python time
per event. In the daemon's own process they compete for the GIL with polling and with the
committer thread, so the pipeline stalls on one core while the other idles. A worker
process runs them in parallel instead. It only ever sees message bytes and returns strings
(`linking.PendingRecord`) or rejections: it never touches PostgreSQL or Kafka, so the
transaction, locking and offset rules are those of the committer thread alone.

Both directions cross the process boundary as plain tuples, not NamedTuples,
which pickle through a Python call each (`__getnewargs__` out, `__new__` back in): about a
third of what the pipe cost per event (`bench/validation_bench.py` measures the trip).

`workers=0` validates in the calling thread (no extra process): for tests and small
installations. A worker ignores SIGINT/SIGTERM (the daemon decides when to stop and shuts
the pool down) and exits by itself if the daemon dies, so no orphan is left behind.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from datetime import datetime
from typing import cast

from audit_service.core.errors import AuditServiceError
from audit_service.core.events import EventRejected, ValidationLimits
from audit_service.core.linking import PendingRecord
from audit_service.core.messages import ConsumedMessage
from audit_service.ingest.batch import PreparedBatch, prepare_batch

log = logging.getLogger(__name__)

ORPHAN_CHECK_S = 1.0
"""How often a worker checks that the daemon that started it is still alive."""
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(1)


def _start_worker(parent: int) -> None:
    """Worker initializer: leave signals to the daemon, and die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT/SIGTERM in this thread while the executor may spawn a worker.

    A spawned worker inherits the mask, so a stop signal sent to the whole process group
    or cgroup (Ctrl-C, `systemctl stop`) in the second before its initializer ignores them
    cannot kill it. The daemon itself misses nothing: its other threads still receive the
    signals, and anything sent to this thread stays pending until the mask is restored.
    (multiprocessing's resource tracker is started the same way.)
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _started() -> int:
    return os.getpid()


MessageFields = tuple[str, int, int, bytes | None, bytes | None]
"""What the worker needs of a `ConsumedMessage`: all but the Kafka timestamp."""
PendingFields = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]
"""A `PendingRecord` as a plain tuple."""


def _to_worker(messages: Sequence[ConsumedMessage]) -> list[MessageFields]:
    return [(m.topic, m.partition, m.offset, m.key, m.value) for m in messages]


def _from_worker(
    results: list[PendingFields | EventRejected],
) -> list[PendingRecord | EventRejected]:
    return [result if isinstance(result, EventRejected) else PendingRecord._make(result)
            for result in results]


def _validate(
    messages: list[MessageFields], limits: ValidationLimits, now: datetime
) -> list[PendingFields | EventRejected]:
    """The worker's task: prepare a batch, and return it as plain tuples."""
    parsed = prepare_batch([ConsumedMessage(*fields) for fields in messages], limits, now).parsed
    return [cast(PendingFields, tuple(result)) if isinstance(result, PendingRecord) else result
            for result in parsed]


class ValidationPool:
    """Turns polled batches into `PreparedBatch`es, in a worker process or in line."""

    def __init__(self, limits: ValidationLimits, workers: int):
        self.limits = limits
        try:
            self._executor = (
                ProcessPoolExecutor(
                    max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker, initargs=(os.getpid(),),
                ) if workers else None
            )
        except OSError as exc:  # its queues need semaphores (/dev/shm)
            raise AuditServiceError(f"cannot set up the validation worker: {exc}") from exc

    def start(self) -> None:
        """Start the worker now and wait until it answers: spawning takes about a second,
        which the first batch after startup would otherwise wait for (latency)."""
        if self._executor is not None:
            try:
                with _stop_signals_blocked():
                    started = self._executor.submit(_started)
                worker = started.result()
            except BrokenProcessPool as exc:
                raise AuditServiceError(f"cannot start the validation worker: {exc}") from exc
            log.info("validation worker started", extra={"pid": worker})

    def submit(
        self, messages: Sequence[ConsumedMessage], now: datetime
    ) -> Future[PreparedBatch]:
        """Start validating `messages`; the future's result is the prepared batch."""
        done: Future[PreparedBatch] = Future()
        if self._executor is None:
            done.set_result(prepare_batch(messages, self.limits, now))
            return done
        try:
            with _stop_signals_blocked():
                parsed = self._executor.submit(_validate, _to_worker(messages), self.limits, now)
        except BrokenProcessPool as exc:
            raise AuditServiceError(f"the validation worker is gone: {exc}") from exc
        parsed.add_done_callback(lambda result: _complete(done, messages, result))
        return done

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _complete(
    done: Future[PreparedBatch], messages: Sequence[ConsumedMessage],
    parsed: Future[list[PendingFields | EventRejected]],
) -> None:
    try:
        done.set_result(PreparedBatch(messages, _from_worker(parsed.result())))
    except BrokenProcessPool as exc:
        done.set_exception(AuditServiceError(
            f"the validation worker died (killed, or out of memory?): {exc}"))
    except BaseException as exc:  # handed to the waiting loop, which raises it
        done.set_exception(exc)
