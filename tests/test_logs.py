"""Structured logs: JSON lines, library logs through the same renderer, rate-limited floods."""

from __future__ import annotations

import io
import json
import logging

import structlog

from streamer import logs


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_off_a_terminal_and_library_logs_alike():
    out = io.StringIO()
    logs.configure("INFO", "auto", out)
    structlog.get_logger("streamer.test").info("checkpoint", id="ckpt-00000001", step=5)
    logging.getLogger("kafka.coordinator").warning("broker %s away", "b1")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["event"] == "checkpoint" and lines[0]["id"] == "ckpt-00000001"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert lines[1]["event"] == "broker b1 away" and lines[1]["logger"] == "kafka.coordinator"


def test_readable_lines_on_a_terminal_and_levels_apply_to_libraries():
    out = _Tty()
    logs.configure("WARNING", "auto", out)
    structlog.get_logger("streamer.test").info("hidden")
    structlog.get_logger("streamer.test").warning("shown", partition=3)
    logging.getLogger("kafka.conn").info("chatter")
    text = out.getvalue()
    assert "shown" in text and "partition" in text and "hidden" not in text
    assert "chatter" not in text and not text.lstrip().startswith("{")


def test_a_flood_of_one_reason_is_a_bounded_number_of_lines():
    out = io.StringIO()
    logs.configure("INFO", "json", out)
    now = [0.0]
    limited = logs.RateLimited(structlog.get_logger("t"), "record refused", 10.0, lambda: now[0])
    for i in range(10_000):
        now[0] = i * 0.002  # 20 s of records
        limited("not_json", offset=i)
    limited.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3  # first sample, one per elapsed interval, the flush
    assert lines[0]["offset"] == 0
    assert sum(line["suppressed_since_last"] for line in lines) == 10_000 - 2


def test_kafka_event_loop_warnings_are_one_line_per_interval_and_other_warnings_all_pass():
    out = io.StringIO()
    logs.configure("INFO", "json", out)
    now = [0.0]
    selector = logging.getLogger("kafka.net.selector")
    aggregate = next(f for f in selector.filters if isinstance(f, logs.Aggregate))
    aggregate._clock = lambda: now[0]
    for i in range(300):  # 300 in 90 s, as seen on a GPU node under load
        now[0] = i * 0.3
        selector.warning("Task %r ran for %.3fs. It is blocking the event loop -- likely", i, 0.2)
        if i % 100 == 0:
            selector.warning("Task %s left RUNNING after step", i)
    lines = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    blocking = [line for line in lines if "blocking the event loop" in line]
    assert len(blocking) == 2  # the first, then one per 60 s with the count held back
    assert "(199 more like it held back since)" in blocking[1]
    assert sum("left RUNNING" in line for line in lines) == 3  # nothing else is held back
