"""The services a benchmark runs against: the same embedded PostgreSQL and Tansu broker the
tests use (or AUDIT_TEST_DATABASE_URL / AUDIT_TEST_KAFKA_BOOTSTRAP), plus helpers to make
fresh databases and topics and to fill a topic fast."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from audit_service.dev.devstack import EmbeddedPostgres, TansuBroker, create_topic
from audit_service.storage.migrations import upgrade_to_head


@dataclass
class Stack:
    admin_url: str
    bootstrap: str
    scratch: Path

    def new_database(self, prefix: str = "bench") -> str:
        """A fresh, migrated database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        url = make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        upgrade_to_head(url)
        return url

    def new_topic(self, partitions: int = 4) -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        create_topic(self.bootstrap, name, partitions=partitions)
        return name


@contextmanager
def running_stack() -> Iterator[Stack]:
    """Start (or reuse, per the AUDIT_TEST_* variables) PostgreSQL and the broker."""
    scratch = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    pg = broker = None
    try:
        admin_url = os.environ.get("AUDIT_TEST_DATABASE_URL")
        if not admin_url:
            pg = EmbeddedPostgres.start(scratch / "pg")
            admin_url = pg.url("postgres")
        bootstrap = os.environ.get("AUDIT_TEST_KAFKA_BOOTSTRAP")
        if not bootstrap:
            broker = TansuBroker.start(log_path=scratch / "tansu.log")
            bootstrap = broker.bootstrap
        yield Stack(admin_url, bootstrap, scratch)
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def fill_topic(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> int:
    """Publish pre-built (key, value) messages as fast as the broker takes them."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 500000})
    count = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("broker did not acknowledge every benchmark message")
    return count
