"""kafka-python clients built from Settings: the group consumer, the DLQ producer and reader.

All three share `settings.kafka.client_options()` so security settings apply
everywhere. Kept apart from the loop so unit tests can inject fakes.
"""

from __future__ import annotations

from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

from dispatchloop.settings import Settings

# How long a client constructor waits for the first broker before raising
# (kafka-python's default would block for the whole request timeout).
BOOTSTRAP_TIMEOUT_MS = 5_000


def make_consumer(settings: Settings, listener: ConsumerRebalanceListener) -> Any:
    """The group consumer: manual commits, offsets reset per settings, subscribed to the topic."""
    kafka = settings.kafka
    consumer = KafkaConsumer(
        group_id=kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset=kafka.auto_offset_reset,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_records=kafka.max_poll_records,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        **kafka.client_options(),
    )
    consumer.subscribe([kafka.topic], listener=listener)
    return consumer


def make_dlq_producer(settings: Settings) -> Any:
    """acks=all and idempotent: a dead letter is only counted once every replica has it."""
    timeout_ms = int(settings.ingest.dlq_send_timeout_s * 1_000)
    return KafkaProducer(
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        delivery_timeout_ms=max(timeout_ms, settings.kafka.request_timeout_ms + 5),
        max_block_ms=timeout_ms,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        **settings.kafka.client_options(),
    )


def make_dlq_reader(settings: Settings) -> Any:
    """A group-less consumer used to read the DLQ's tail after an assignment."""
    return KafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        **settings.kafka.client_options(),
    )
