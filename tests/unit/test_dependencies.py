"""Runtime dependencies that matter for speed are really in use, not just installed."""

from __future__ import annotations

import crc32c
from kafka.record import util
from kafka.record._crc32c import crc as pure_python_crc32c


def test_kafka_python_checks_record_crcs_with_the_c_crc32c_package() -> None:
    # Without it kafka-python falls back to a pure-Python CRC32C: measured ~6x slower drain.
    assert util.calc_crc32c.__defaults__ == (crc32c.crc32c,)
    payload = memoryview(b"audit-service record batch")
    assert util.calc_crc32c(payload) == pure_python_crc32c(payload)
