"""Dead-lettering is total (offline): whatever a message holds (any bytes, any id, any
header values), its dead letter encodes for both brokers; skipped Kafka records are found."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
from types import SimpleNamespace
from typing import Any

import aio_pika
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from pamqp import frame, header

from serve_app.brokers.base import (
    BODY_BYTES_HEADER,
    MAX_DEAD_LETTER_BODY_BYTES,
    POISON_REASON_HEADER,
    DeadLetter,
    Envelope,
    Skipped,
)
from serve_app.brokers.kafka import KafkaDeadLetters, KafkaSource, kafka_record, skipped_range
from serve_app.brokers.rabbitmq import RabbitDeadLetters, amqp_message
from serve_app.settings import Settings

FRAME_MAX = 131_072
"""RabbitMQ's default frame_max: a content header (properties, headers) must fit in it."""

HOSTILE_HEADERS: dict[str, Any] = {
    "lone-surrogate": "\ud800 bad",
    "huge": "y" * 200_000,
    "object": object(),
    "decimal": decimal.Decimal("1.5"),
    "when": datetime.datetime(2026, 1, 1),
    "nested": {"a": ["\udfff", b"\xff"]},
    "bytes": b"\xff\xfe",
    "none": None,
    POISON_REASON_HEADER: "an earlier reason",
    **{f"many-{i}": i for i in range(100)},
}


def amqp_header_frame(message: aio_pika.Message) -> bytes:
    """What aio_pika sends for a message's properties: raises if anything cannot encode."""
    return frame.marshal(header.ContentHeader(0, len(message.body), message.properties), 1)


def rabbit_letter(message_id: Any, headers: dict[str, Any], letter_id: Any = None) -> Any:
    origin = SimpleNamespace(message_id=message_id, headers=headers)
    return DeadLetter(b"\xff\x00 body", "undecodable: \udcff", origin, letter_id)


@pytest.mark.parametrize(
    ("message_id", "letter_id"),
    [("m" * 300, None), (None, "é" * 200), ("\ud800", None), (None, None), ("ok", "t-1")],
)
def test_any_rabbitmq_message_can_be_dead_lettered(message_id: Any, letter_id: Any) -> None:
    sink = RabbitDeadLetters(Settings(), "test")
    envelope = sink.envelope(rabbit_letter(message_id, HOSTILE_HEADERS, letter_id))
    message = amqp_message(envelope)
    assert len(amqp_header_frame(message)) < FRAME_MAX
    assert message.headers[POISON_REASON_HEADER] == envelope.reason
    assert message.message_id is None or len(message.message_id.encode()) <= 255
    assert amqp_message(Envelope.from_json(envelope.to_json())).body == message.body


def test_a_huge_body_is_cut_and_says_how_long_it_was() -> None:
    body = b"x" * (MAX_DEAD_LETTER_BODY_BYTES + 10)
    envelope = Envelope.of(body, "undecodable")
    assert len(envelope.body) == MAX_DEAD_LETTER_BODY_BYTES
    assert dict(envelope.headers)[BODY_BYTES_HEADER] == str(len(body))


def test_any_kafka_record_can_be_dead_lettered() -> None:
    record = SimpleNamespace(topic="weather-tweets", partition=3, offset=42, key=b"k" * 5000)
    sink = KafkaDeadLetters(None, Settings())  # type: ignore[arg-type]
    letter = DeadLetter(b"\xff", "invalid tweet: ('\ud800',): bad", record, "\udcff" * 300)
    options = kafka_record(sink.envelope(letter))
    headers = dict(options["headers"])
    assert all(isinstance(v, bytes) for v in headers.values())
    assert headers["x-original-offset"] == b"42" and len(options["key"]) <= 1024
    json.dumps(Envelope.from_json(sink.envelope(letter).to_json()).reason)


def test_a_skipped_range_is_what_retention_deleted_before_the_position() -> None:
    assert skipped_range("t/0", 100, 250) == Skipped("t/0", 100, 249)
    assert skipped_range("t/0", 100, 250).count == 150  # type: ignore[union-attr]
    assert skipped_range("t/0", 300, 250) is None  # past the end: re-read, deduplicated


class OutOfRangeConsumer:
    """getmany fails the way aiokafka does with auto_offset_reset='none'."""

    def __init__(self) -> None:
        self.tp = TopicPartition("weather-tweets", 1)
        self.sought: dict[TopicPartition, int] = {}

    async def getmany(self, **kw: Any) -> dict[Any, Any]:
        if self.sought:
            return {}
        raise OffsetOutOfRangeError({self.tp: 7})

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 1007 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset


async def test_records_deleted_before_they_were_read_are_reported_not_skipped_silently() -> None:
    consumer = OutOfRangeConsumer()
    source = KafkaSource(consumer, None, Settings(), None)  # type: ignore[arg-type]
    assert await source.fetch() == []
    assert source.take_skipped() == [Skipped("weather-tweets/1", 7, 1006)]
    assert consumer.sought == {consumer.tp: 1007} and source.take_skipped() == []


class ClosedChannelExchange:
    """An exchange on a channel the broker closed (e.g. 404): every publish fails."""

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, mandatory: bool = True
    ) -> None:
        raise aio_pika.exceptions.ChannelClosed(404, "NOT_FOUND - no exchange")


class FakeConnection:
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_a_failed_rabbitmq_dead_letter_send_starts_afresh_next_time() -> None:
    sink = RabbitDeadLetters(Settings(), "test")
    connection = FakeConnection()
    sink._connection, sink._exchange = connection, ClosedChannelExchange()  # type: ignore[assignment]
    with pytest.raises(aio_pika.exceptions.ChannelClosed):
        await sink.send([Envelope.of(b"\xff", "undecodable")])
    assert sink._exchange is None and sink._connection is None
    await asyncio.sleep(0.01)  # closed in the background
    assert connection.closed
