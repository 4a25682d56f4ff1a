"""The daemon's accounting on the in-memory source: exactly once, checkpoint before commit,
revocation, floods, failures and damaged checkpoints, in milliseconds per step."""

from __future__ import annotations

import gc
import json
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamer.intake import codec
from streamer.intake.sink import MemoryDeadLetters
from streamer.intake.source import MemorySource
from streamer.records import RawRecord, id_hash
from streamer.service.daemon import Daemon
from streamer.state.checkpoint import complete_checkpoints

from .conftest import tiny_settings

TOPIC = "pairs"


def _records(samples, partitions: int = 2, bad: dict[int, bytes] | None = None):
    """Samples spread round-robin over partitions, offsets 0.. in each; `bad` replaces the
    value of the n-th record."""
    bad, offsets, out = bad or {}, [0] * partitions, []
    for n, sample in enumerate(samples):
        p = n % partitions
        value = bad.get(n, codec.encode_json(sample))
        out.append(RawRecord(TOPIC, p, offsets[p], value, None, (), int(sample.ts * 1000)))
        offsets[p] += 1
    return out


def _settings(tmp_path: Path, **sections):
    base = {"checkpoint": {"dir": str(tmp_path / "ckpt"), "every_steps": 2},
            "metrics": {"host": "127.0.0.1", "port": 0}, "kafka": {"linger_ms": 0}}  # fmt: skip
    for name, fields in sections.items():
        base.setdefault(name, {}).update(fields)
    return tiny_settings(**base)


class Run:
    """A daemon on a thread over a MemorySource; stops once `until(daemon)` holds."""

    def __init__(self, settings, source: MemorySource, dead=None, on_step=None) -> None:
        self.dead = dead or MemoryDeadLetters()
        self.daemon = Daemon(settings, source=source, dead_letters=self.dead,
                             registry=CollectorRegistry(), on_step=on_step)  # fmt: skip
        source._decode = self.daemon.engine.decoder.decode  # the daemon's own decoder
        self.code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.daemon.run()
        except BaseException as exc:  # a crash, as a kill would leave things
            self.error = exc

    def until(self, condition, timeout: float = 60) -> Run:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not condition(self.daemon) and self._thread.is_alive():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)
        self.daemon.stop.set()
        self._thread.join(timeout)
        return self


def _all(n: int):
    return lambda daemon: daemon.ledger.accounted >= n


def test_every_record_is_accounted_once_and_committed_only_after_its_checkpoint(
    tmp_path, digit_stream
):
    samples = digit_stream[:70]
    records = _records(samples, bad={5: b"not json", 30: b"[1]"})
    source = MemorySource(records, lambda raw: None)  # Run gives it the daemon's decoder
    run = Run(_settings(tmp_path), source)
    run.until(_all(len(records)))
    ledger = run.daemon.ledger
    good = [s for n, s in enumerate(samples) if n not in (5, 30)]
    assert run.code == 0
    assert ledger.counts["trained"] + ledger.counts["probes"] == len(good)
    assert ledger.digest == sum(id_hash(s.id) for s in good) % 2**64
    letters = sorted((r.partition, r.offset, why) for r, why, _ in run.dead.durable)
    assert letters == [(0, 15, "not_json_object"), (1, 2, "not_json")]
    ends = {(TOPIC, 0): 35, (TOPIC, 1): 35}
    assert source.commits[-1][0] == ends
    for offsets, metadata in source.commits:  # each commit is a durable checkpoint's offsets
        ckpt_id, lineage = metadata.split("@")
        assert lineage == ledger.lineage
        path = tmp_path / "ckpt" / ckpt_id
        if path.exists():  # older ones are pruned
            meta = json.loads((path / "meta.json").read_text())
            assert meta["offsets"] == {f"{t}:{p}": o for (t, p), o in offsets.items()}


def _crash_after(steps: int):
    def on_step(outcome, daemon) -> None:
        if outcome.result.step >= steps:
            raise RuntimeError("killed")  # no final checkpoint, as after kill -9

    return on_step


def test_a_crash_then_restart_counts_every_record_exactly_once(tmp_path, digit_stream):
    records = _records(digit_stream[:96])
    source = MemorySource(records, lambda raw: None)
    first = Run(_settings(tmp_path), source, on_step=_crash_after(5))
    first.until(lambda d: False)
    assert isinstance(first.error, RuntimeError) and source.commits  # crashed mid-stream
    again = MemorySource(records, lambda raw: None, group=source.group)
    second = Run(_settings(tmp_path), again)
    second.until(lambda d: d.ledger.offsets.get((TOPIC, 0)) == 48
                 and d.ledger.offsets.get((TOPIC, 1)) == 48)  # fmt: skip
    ledger = second.daemon.ledger
    assert ledger.accounted == len(records)
    assert ledger.digest == sum(id_hash(s.id) for s in digit_stream[:96]) % 2**64


def test_a_damaged_newest_checkpoint_is_skipped_and_its_records_trained_again(
    tmp_path, digit_stream
):
    records = _records(digit_stream[:96])
    settings = _settings(tmp_path, checkpoint={"every_steps": 1, "keep": 5})
    source = MemorySource(records, lambda raw: None)
    first = Run(settings, source, on_step=_crash_after(6))
    first.until(lambda d: False)
    newest = complete_checkpoints(tmp_path / "ckpt")[-1]
    assert source.commits[-1][1].startswith(newest.name)  # the group holds its offsets
    (newest / "weights.safetensors").write_bytes(b"truncated")
    again = MemorySource(records, lambda raw: None, group=source.group)
    second = Run(settings, again)
    second.until(_all(len(records)))
    ledger, registry = second.daemon.ledger, second.daemon.metrics.registry
    assert ledger.accounted == len(records)  # nothing lost, nothing counted twice
    assert ledger.digest == sum(id_hash(s.id) for s in digit_stream[:96]) % 2**64
    assert registry.get_sample_value("streamer_checkpoint_unreadable_total") == 1
    assert (tmp_path / "ckpt" / f"{newest.name}.damaged").is_dir()


def test_with_every_checkpoint_damaged_the_daemon_refuses_to_start(tmp_path, digit_stream):
    records = _records(digit_stream[:48])
    settings = _settings(tmp_path, checkpoint={"every_steps": 1, "keep": 2})
    source = MemorySource(records, lambda raw: None)
    first = Run(settings, source)
    first.until(_all(len(records)))
    for path in complete_checkpoints(tmp_path / "ckpt"):
        (path / "meta.json").write_text("{garbled")
    again = MemorySource(records, lambda raw: None, group=source.group)
    second = Run(settings, again).until(lambda d: False)
    assert second.code == 1 and second.daemon.state == "failed"
    assert second.daemon.ledger.accounted == 0 and not again.commits


def test_start_up_objects_are_out_of_the_collectors_view_while_it_runs(tmp_path, digit_stream):
    frozen: list[int] = []
    source = MemorySource(_records(digit_stream[:32]), lambda raw: None)
    run = Run(
        _settings(tmp_path), source, on_step=lambda _o, _d: frozen.append(gc.get_freeze_count())
    )
    run.until(lambda d: frozen)
    assert frozen[0] > 10_000  # torch's and the rest: a full collection no longer scans them
    assert gc.get_freeze_count() == 0  # stopped: a later daemon in this process collects them


def test_revoked_partitions_are_checkpointed_and_committed_before_they_leave(
    tmp_path, digit_stream
):
    records = _records(digit_stream[:64])
    settings = _settings(tmp_path, checkpoint={"every_steps": 1000, "every_seconds": 1000})
    source = MemorySource(records, lambda raw: None)
    revocations = []

    def on_step(outcome, daemon) -> None:
        if outcome.result.step == 2:
            revocations.append(source.revoke({(TOPIC, 0)}))

    run = Run(settings, source, on_step=on_step)
    run.until(lambda d: revocations and revocations[0].done.is_set())
    assert len(source.commits) >= 1
    offsets, metadata = source.commits[0]  # the revocation's, before any periodic one
    assert offsets[(TOPIC, 0)] == run.daemon.ledger.offsets[(TOPIC, 0)] > 0
    assert (tmp_path / "ckpt" / metadata.split("@")[0]).is_dir()


def test_a_flood_of_refusals_stops_the_daemon_and_commits_nothing_past_its_checkpoint(
    tmp_path, digit_stream
):
    records = _records(digit_stream[:40], partitions=1,
                       bad={n: b"garbage" for n in range(10, 40)})  # fmt: skip
    settings = _settings(tmp_path, dead_letter={"window": 20, "max_share": 0.5})
    source = MemorySource(records, lambda raw: None)
    run = Run(settings, source)
    run.until(lambda d: False)
    assert run.code == 1 and run.daemon.state == "failed"
    committed = [c[0].get((TOPIC, 0), 0) for c in source.commits]
    assert all(offset <= 16 for offset in committed)  # only what trained before the flood


def test_a_failed_source_fails_health_at_once_and_the_daemon_without_committing(
    tmp_path, digit_stream
):
    records = _records(digit_stream[:64])
    source = MemorySource(records, lambda raw: None)
    seen = []

    def on_step(outcome, daemon) -> None:
        if outcome.result.step == 2:
            source.fail("decode thread died: SystemError: boom")
            seen.append(daemon.healthy())

    settings = _settings(tmp_path, checkpoint={"every_steps": 1000, "every_seconds": 1000})
    run = Run(settings, source, on_step=on_step)
    run.until(lambda d: False)
    assert seen == [(False, "failed: decode thread died: SystemError: boom")]
    assert run.code == 1 and run.daemon.state == "failed" and not source.commits


def test_dead_letters_must_be_durable_before_offsets_past_them_are_committed(
    tmp_path, digit_stream
):
    records = _records(digit_stream[:32], partitions=1, bad={3: b"not json"})
    source = MemorySource(records, lambda raw: None)
    run = Run(_settings(tmp_path), source, dead=MemoryDeadLetters(broken=True))
    run.until(lambda d: False)
    assert run.code == 1 and not source.commits


def test_importing_the_daemon_loads_no_dataset_or_harness_module():
    import subprocess
    import sys

    harness = ("streamer.dev", "sklearn.datasets")
    code = ("import sys, streamer.service.daemon, streamer.cli; "
            f"print(sorted(m for m in sys.modules if m.startswith({harness!r})))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_kafka_security_settings_are_checked_against_the_protocol(tmp_path, protocol):
    from pydantic import ValidationError

    from streamer.config import KafkaConfig

    cert = tmp_path / "client.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    if protocol == "PLAINTEXT":
        with pytest.raises(ValidationError, match="ssl_certfile needs security_protocol"):
            KafkaConfig(ssl_certfile=cert)
        return
    cfg = KafkaConfig(security_protocol="SSL", ssl_certfile=cert, ssl_keyfile=cert,
                      ssl_password="k", group_instance_id="streamer-0",
                      isolation_level="read_committed")  # fmt: skip
    from streamer.intake.kafka_group import client_options, consumer_options

    options = consumer_options(cfg)
    assert options["ssl_certfile"] == str(cert) and options["ssl_password"] == "k"
    assert options["group_instance_id"] == "streamer-0"
    assert options["isolation_level"] == "read_committed"
    assert client_options(cfg)["ssl_check_hostname"] is True
    for bad, field in ((dict(ssl_keyfile=cert), "ssl_keyfile needs ssl_certfile"),
                       (dict(group_instance_id="pod/0"), "group_instance_id"),
                       (dict(ssl_cafile=tmp_path / "missing.pem"), "ssl_cafile")):  # fmt: skip
        with pytest.raises(ValidationError, match=field):
            KafkaConfig(security_protocol="SSL", **bad)
