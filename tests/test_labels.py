"""The bounded label set: the scoring candidates of a stream with any number of labels."""

from __future__ import annotations

from streamer.learning.labels import LabelSet
from streamer.records import Sample
from streamer.service.pipeline import build_engine

from .conftest import tiny_settings


def test_the_least_recently_seen_label_leaves_and_arrival_order_is_kept():
    labels = LabelSet(3)
    for prompt in ("a", "b", "c", "a", "d"):  # "a" seen again: "b" is now the oldest
        labels.see(prompt)
    assert labels.labels == ["a", "c", "d"] and len(labels) == 3


def test_under_the_bound_it_is_the_unbounded_set_in_order_of_arrival():
    labels = LabelSet(100)
    for prompt in ("x", "y", "x", "z", "y"):
        labels.see(prompt)
    assert labels.labels == ["x", "y", "z"]


def test_state_round_trips_and_old_checkpoints_load():
    labels = LabelSet(3)
    for prompt in ("a", "b", "c", "a"):
        labels.see(prompt)
    again = LabelSet(3)
    again.load_state_dict(labels.state_dict())
    again.see("d")  # evicts "b", as the original would
    labels.see("d")
    assert again.labels == labels.labels == ["a", "c", "d"]
    old = LabelSet(2)
    old.load_state_dict(["p", "q", "r"])  # before the bound: a plain list, oldest first
    assert old.labels == ["q", "r"]


def test_a_stream_of_distinct_labels_keeps_at_most_max_labels_candidates(digit_stream):
    engine = build_engine(tiny_settings(learner={"max_labels": 20, "replay_per_step": 0,
                                                 "steps_per_batch": 1}))  # fmt: skip
    for step in range(4):
        batch = [
            Sample(f"s{step}-{i}", s.image, s.text, f"item-{step}-{i}", None, s.ts)
            for i, s in enumerate(digit_stream[step * 16 : step * 16 + 16])
        ]
        engine.learner.step([engine.to_pair(s) for s in batch])
        assert len(engine.learner.labels) == min(20, 16 * (step + 1))
    assert engine.learner.labels[-1] == "a photo of a item-3-15."
