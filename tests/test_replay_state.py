"""A replay's checkpointed state: residents as columns, any sample round-trips exactly, the
pickled objects do not grow with capacity, and earlier checkpoints' layout still loads."""

from __future__ import annotations

import io
import math
import pickle
import random

import pytest
import torch

from streamer.config import ReplayConfig
from streamer.learning.replay import ReplayBuffer
from streamer.learning.replay_policies import build_replay
from streamer.learning.replay_state import pack, unpack
from streamer.records import Pair, Sample

ODD = [
    Sample("a", b"\x00\xff" * 5, "caf\u00e9 \U0001f600", "t-shirt", "task-1", 1.5),
    Sample("lone \ud800 surrogate", b"", "", None, None, 0.0),  # a key Kafka may hand us
    Sample("nan", b"x", 'quote " and \\ and \n', "\u0000", "", math.nan),
    Sample("inf", bytes(range(256)), "t", "l", "w", -math.inf),
]


def _saved(state, tmp_path):
    torch.save(state, tmp_path / "state.pt")  # as the checkpoint writes it, and reads it
    return torch.load(tmp_path / "state.pt", weights_only=True)


def _same(a: Sample, b: Sample) -> bool:
    fields = [(x, y) for x, y in zip(_fields(a), _fields(b), strict=True)]
    return all(x == y or (x != x and y != y) for x, y in fields)  # NaN equals NaN here


def _fields(s: Sample) -> tuple:
    return (s.id, s.image, s.text, s.label, s.task, s.ts)


def test_any_sample_round_trips_exactly_through_a_checkpoint(tmp_path):
    buffer = ReplayBuffer(10, seed=1)
    for sample in ODD:
        buffer.add(sample)
    again = ReplayBuffer(10, seed=2)
    again.load_state_dict(_saved(buffer.state_dict(), tmp_path))
    assert len(again) == len(ODD)
    assert all(_same(x, y) for x, y in zip(buffer.items(), again.items(), strict=True))


def test_encoded_and_pixel_residents_mixed_keep_their_kind_and_bytes(tmp_path):
    samples = [Sample(str(i), bytes([i]) * (i + 1), f"t{i}") for i in range(6)]
    pixels = {1: torch.full((3, 4, 4), 1, dtype=torch.uint8),
              4: torch.full((3, 2, 2), 4, dtype=torch.uint8)}  # fmt: skip
    stacked = [([2, 5], torch.stack([torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (2, 5)]))]
    state = _saved({"items": pack(samples, stacked, pixels)}, tmp_path)
    items, held = unpack(state)
    assert [i["id"] for i in items] == [s.id for s in samples]
    for n, (item, tensor) in enumerate(zip(items, held, strict=True)):
        if n in (1, 2, 4, 5):
            assert item["image"] is None and int(tensor.flatten()[0]) == n
        else:
            assert item["image"] == samples[n].image and tensor is None


def test_a_restored_resident_owns_its_pixels_not_a_view_of_the_whole_stack(tmp_path):
    buffer = ReplayBuffer(8, seed=3, store="pixels")
    for i in range(8):
        buffer.add(Pair(Sample(str(i), b"jpeg", "t"), torch.full((3, 4, 4), i, dtype=torch.uint8)))
    entries = buffer.items()
    state = buffer.frozen()()
    moved = [(list(range(8)), torch.stack([e.pixels for e in entries]))]  # as from a device
    state["items"] = pack([e.sample for e in entries], moved)
    again = ReplayBuffer(8, seed=3, store="pixels")
    again.load_state_dict(_saved(state, tmp_path))
    restored = again.items()
    assert [e.sample.id for e in restored] == [e.sample.id for e in entries]
    assert all(torch.equal(x.pixels, y.pixels) for x, y in zip(entries, restored, strict=True))
    assert all(e.pixels.untyped_storage().nbytes() == e.pixels.nbytes for e in restored)


def _objects(state) -> int:
    """Objects the pickler visits: torch.save runs a Python callback for each of them."""
    count = 0

    class Counting(pickle.Pickler):
        def persistent_id(self, obj):
            nonlocal count
            count += 1
            return None

    Counting(io.BytesIO(), protocol=2).dump(state)
    return count


@pytest.mark.parametrize("policy", ["reservoir", "per_window", "recent_and_reservoir"])
def test_the_objects_a_checkpoint_pickles_do_not_grow_with_the_residents(policy):
    sizes = {}
    for n in (50, 2_000):
        replay = build_replay(ReplayConfig(capacity=n, policy=policy), 0, lambda s: s.task or "")
        for i in range(n):
            replay.add(Sample(str(i), random.randbytes(40), f"text {i}", "l", f"w{i * 3 // n}"))
        sizes[n] = _objects(replay.frozen()())
    assert sizes[2_000] == sizes[50] < 1_000  # three windows, at most: a few hundred


@pytest.mark.parametrize("policy", ["per_window", "recent_and_reservoir"])
def test_every_policy_has_a_state_for_background_checkpoints(policy, tmp_path):
    cfg = ReplayConfig(capacity=30, policy=policy)
    a, b = (build_replay(cfg, 0, lambda s: s.task or "") for _ in range(2))
    samples = [Sample(str(i), b"x" * (i % 7), "t", None, f"w{i // 40}") for i in range(100)]
    for sample in samples[:60]:
        a.add(sample)
    build = a.frozen()  # the state as of now ...
    a.add(samples[60])  # ... whatever is added before it is built
    b.load_state_dict(_saved(build(), tmp_path))
    b.add(samples[60])
    for sample in samples[61:]:
        a.add(sample)
        b.add(sample)
    assert [s.id for s in a.items()] == [s.id for s in b.items()]
    assert [s.id for s in a.sample(12)] == [s.id for s in b.sample(12)]


def test_the_earlier_layout_a_dict_per_resident_still_loads(tmp_path):
    words = random.Random(0).getstate()[1]
    rng = [3, list(words), None]
    earlier = {"capacity": 3, "max_bytes": None, "seen": 7, "tau": 0.5, "rng": rng,
               "key_rng": rng, "keys": [0.1, 0.2, 0.3],
               "pixels": [None, torch.ones(3, 2, 2, dtype=torch.uint8), None],
               "items": [{"id": "0", "image": b"ab", "text": "t", "label": None, "task": None,
                          "ts": 0.0},
                         {"id": "1", "image": None, "text": "u", "label": "l", "task": "w",
                          "ts": 2.0},
                         {"id": "2", "image": b"c", "text": "v"}]}  # fmt: skip
    buffer = ReplayBuffer(3, seed=5, store="pixels")
    buffer.load_state_dict(_saved(earlier, tmp_path))
    held = buffer.items()
    assert [sample.id for sample in (e.sample if isinstance(e, Pair) else e for e in held)] == [
        "0", "1", "2"]  # fmt: skip
    assert isinstance(held[1], Pair) and held[1].pixels.sum() == 12
    assert held[0].image == b"ab" and buffer.seen == 7 and buffer.threshold == 0.5
