"""The dead-letter sink: every refused record can be sent, whatever it lacks."""

from __future__ import annotations

from pathlib import Path

from streamer.config import KafkaConfig
from streamer.intake import codec
from streamer.intake.sink import KafkaDeadLetters
from streamer.records import RawRecord


class _Producer:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, topic: str, value=None, key=None, headers=None):
        if value is None and key is None:  # as kafka-python's KafkaProducer.send
            raise ValueError("Need at least one: key or value")
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers})


def test_a_record_with_neither_key_nor_value_is_dead_lettered_with_an_empty_value():
    sink = KafkaDeadLetters(KafkaConfig(topic="pairs"))
    sink._producer = _Producer()
    sink.send(RawRecord("pairs", 0, 7, None), "unreadable_record", "KeyError: header")
    sink.send(RawRecord("pairs", 0, 8, None, key=b"k"), "empty_value", "")
    first, second = sink._producer.sent
    assert first["topic"] == "pairs.dlq" and first["value"] == b"" and first["key"] is None
    assert ("streamer.reason", b"unreadable_record") in first["headers"]
    assert second["value"] is None and second["key"] == b"k"  # a keyed tombstone as it came


def test_the_guarantees_list_every_refusal_reason():
    guarantees = (Path(__file__).parents[1] / "docs" / "guarantees.md").read_text()
    assert [r for r in codec.REASONS if f"`{r}`" not in guarantees] == []
