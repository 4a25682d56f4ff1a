"""Background checkpoints: the state as of the step boundary, written and committed on the
writer thread while training goes on; one write at a time; a foreground one waits for it."""

from __future__ import annotations

import threading

import torch
from prometheus_client import CollectorRegistry

from streamer.intake.sink import MemoryDeadLetters
from streamer.intake.source import MemorySource
from streamer.learning.distributed import World
from streamer.learning.replay_state import unpack
from streamer.records import RawRecord
from streamer.service.metrics import Metrics
from streamer.service.persist import Persistence
from streamer.service.pipeline import build_engine
from streamer.state.checkpoint import Checkpointer, load_latest
from streamer.state.ledger import Ledger

from .conftest import tiny_settings

P = ("t", 0)


class Gate:
    """Holds the checkpointer's writes until opened: a write 'in flight' on demand."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.open, self.entered, self._save = (
            threading.Event(),
            threading.Event(),
            checkpointer.save,
        )
        checkpointer.save = self.save  # type: ignore[method-assign]

    def save(self, *args, **kwargs):
        self.entered.set()
        self.open.wait(30)
        return self._save(*args, **kwargs)


def persistence(tmp_path, digit_stream):
    settings = tiny_settings(checkpoint={"dir": str(tmp_path / "ckpt")})
    engine = build_engine(settings)
    for sample in digit_stream[:20]:
        engine.replay.add(engine.to_pair(sample))
    ledger = Ledger()
    persist = Persistence(Checkpointer(settings.checkpoint), World(), engine, ledger,
                          MemoryDeadLetters(), Metrics(CollectorRegistry()))  # fmt: skip
    source = MemorySource([RawRecord("t", 0, n, b"") for n in range(50)], lambda raw: None)
    source.start(lambda _p, _g: None)
    return persist, engine, ledger, source


def test_a_background_checkpoint_holds_the_state_of_its_boundary_not_of_the_write(
    tmp_path, digit_stream
):
    persist, engine, ledger, source = persistence(tmp_path, digit_stream)
    ledger.advance(P, 9)
    gate = Gate(persist.checkpointer)
    weights = {k: v.clone() for k, v in engine.model.trainable_state().items()}
    assert persist.begin(source, {"step": 1})
    gate.entered.wait(30)
    with torch.no_grad():  # training goes on while the write is held
        for p in engine.model.trainable_parameters().values():
            p.add_(1.0)
    for sample in digit_stream[20:40]:
        engine.replay.add(engine.to_pair(sample))
    ledger.advance(P, 19)
    assert not persist.begin(source, {"step": 2})  # one write at a time: skipped
    gate.open.set()
    persist.settle()
    saved = load_latest(tmp_path / "ckpt")
    assert saved.meta["offsets"] == {"t:0": 10}
    assert all(torch.equal(saved.weights[k], v) for k, v in weights.items())
    assert len(unpack(saved.state["ranks"][0]["replay"])[0]) == 20
    assert source.commits == [({P: 10}, f"{saved.id}@{ledger.lineage}")]  # once durable
    assert ledger.committed == {P: 10} and ledger.dirty  # offset 19 is not in it


def test_a_foreground_checkpoint_waits_for_the_one_in_flight_and_commits_after_it(
    tmp_path, digit_stream
):
    persist, _, ledger, source = persistence(tmp_path, digit_stream)
    ledger.advance(P, 4)
    gate = Gate(persist.checkpointer)
    persist.begin(source, {"step": 1})
    gate.entered.wait(30)
    ledger.advance(P, 14)
    threading.Timer(0.2, gate.open.set).start()
    last = persist.save_and_commit(source, {"step": 2}, frozenset())
    assert [c[0] for c in source.commits] == [{P: 5}, {P: 15}]
    assert source.commits[-1][1].startswith(last) and not ledger.dirty
