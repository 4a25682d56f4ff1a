"""Reservoir buffer: uniform inclusion with and without a byte budget, sampling, state."""

from __future__ import annotations

import random
import statistics

import torch

from streamer.learning.replay import ReplayBuffer
from streamer.learning.replay_state import unpack
from streamer.records import Pair, Sample

# Chi-square critical value, 49 degrees of freedom, p = 0.001.
CHI2_49_P001 = 85.35


def _sample(i: int, size: int = 10) -> Sample:
    return Sample(id=str(i), image=b"x" * size, text=f"t{i}", label=str(i % 10))


def _chi_square(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def _inclusion_counts(positions_held: list[list[int]], n: int, bins: int) -> list[int]:
    counts = [0] * bins
    for held in positions_held:
        for position in held:
            counts[position * bins // n] += 1
    return counts


def _budget_run(seed: int, n: int, max_bytes: int) -> ReplayBuffer:
    """Sizes 50-150 bytes drawn independently of position; the byte budget binds."""
    sizes = random.Random(10_000 + seed)
    buffer = ReplayBuffer(capacity=10_000, max_bytes=max_bytes, seed=seed)
    for i in range(n):
        buffer.add(_sample(i, size=sizes.randint(50, 150)))
    return buffer


def test_inclusion_is_uniform_over_the_stream():
    n, capacity, runs, bins = 100_000, 500, 10, 50
    held = []
    for seed in range(runs):
        buffer = ReplayBuffer(capacity, seed=seed)
        for i in range(n):
            buffer.add(_sample(i))
        assert len(buffer) == capacity and buffer.seen == n
        held.append([int(s.id) for s in buffer.items()])
    assert _chi_square(_inclusion_counts(held, n, bins)) < CHI2_49_P001


def test_inclusion_stays_uniform_when_the_byte_budget_binds():
    # About 190 samples fit 20 kB, far below the capacity: the budget alone decides.
    n, runs, bins = 20_000, 30, 50
    held = []
    for seed in range(runs):
        buffer = _budget_run(seed, n, max_bytes=20_000)
        assert 150 < len(buffer) < 10_000 and buffer.nbytes <= 20_000
        held.append([int(s.id) for s in buffer.items()])
    assert _chi_square(_inclusion_counts(held, n, bins)) < CHI2_49_P001


def test_held_samples_are_as_old_as_uniformity_predicts_under_a_budget():
    # Uniform over n positions: the median age is n / 2. A recency window (the old bug: every
    # new sample admitted once the budget bound) has a median age of a few dozen.
    n, runs = 10_000, 20
    medians = []
    for seed in range(runs):
        buffer = _budget_run(seed, n, max_bytes=20_000)
        ages = [n - 1 - int(s.id) for s in buffer.items()]
        medians.append(statistics.median(ages))
        assert medians[-1] > n / 4
    # the mean of 20 medians of ~190 uniforms has a standard deviation of about 0.008 n
    assert abs(statistics.mean(medians) - n / 2) < 0.03 * n


def test_the_uniformity_check_rejects_a_biased_buffer():
    # A "keep the latest" buffer of the same size must fail the same statistic.
    n, capacity, runs, bins = 100_000, 500, 10, 50
    held = [list(range(n - capacity, n)) for _ in range(runs)]
    assert _chi_square(_inclusion_counts(held, n, bins)) > CHI2_49_P001
    rng = random.Random(0)  # and half-uniform over the first half only
    held = [rng.sample(range(n // 2), capacity) for _ in range(runs)]
    assert _chi_square(_inclusion_counts(held, n, bins)) > CHI2_49_P001


def test_held_samples_are_exactly_those_below_the_threshold():
    buffer = _budget_run(seed=5, n=3_000, max_bytes=5_000)
    keys = buffer.state_dict()["keys"]
    assert max(keys) < buffer.threshold
    fresh = ReplayBuffer(capacity=10_000, max_bytes=5_000, seed=5)
    all_keys = [fresh._keys.random() for _ in range(3_000)]  # the same key sequence
    assert sorted(keys) == sorted(k for k in all_keys if k < buffer.threshold)


def test_sample_is_without_replacement_and_bounded():
    buffer = ReplayBuffer(50, seed=1)
    for i in range(30):
        buffer.add(_sample(i))
    drawn = buffer.sample(20)
    assert len({s.id for s in drawn}) == 20
    assert len(buffer.sample(100)) == 30
    assert ReplayBuffer(10).sample(5) == []


def test_zero_capacity_holds_nothing():
    buffer = ReplayBuffer(0)
    buffer.add(_sample(1))
    assert len(buffer) == 0 and buffer.seen == 1 and buffer.sample(3) == []


def test_byte_budget_is_respected_and_nbytes_is_exact():
    buffer = ReplayBuffer(100, max_bytes=1_000, seed=2)
    for i in range(500):
        buffer.add(_sample(i, size=90))
        assert buffer.nbytes <= 1_000
    assert buffer.nbytes == sum(len(s.image) + len(s.text) for s in buffer.items())
    assert 0 < len(buffer) <= 1_000 // 90


def test_a_sample_larger_than_the_budget_is_never_held():
    buffer = ReplayBuffer(10, max_bytes=100, seed=0)
    buffer.add(_sample(0, size=500))
    assert len(buffer) == 0 and buffer.nbytes == 0 and buffer.seen == 1


def test_state_round_trip_continues_identically_with_the_budget_active(tmp_path):
    a = ReplayBuffer(64, max_bytes=3_000, seed=3)
    for i in range(1_000):
        a.add(_sample(i, size=30 + i % 50))
    torch.save(a.state_dict(), tmp_path / "replay.pt")  # what the checkpoint does
    b = ReplayBuffer(64, max_bytes=3_000, seed=999)
    b.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    for i in range(1_000, 2_000):
        a.add(_sample(i, size=30 + i % 50))
        b.add(_sample(i, size=30 + i % 50))
    assert [s.id for s in a.items()] == [s.id for s in b.items()]
    assert [s.id for s in a.sample(10)] == [s.id for s in b.sample(10)]
    assert a.nbytes == b.nbytes and a.threshold == b.threshold


def test_a_smaller_capacity_on_restore_evicts_the_largest_keys():
    a = ReplayBuffer(100, seed=4)
    for i in range(1_000):
        a.add(_sample(i))
    state = a.state_dict()
    b = ReplayBuffer(40, seed=4)
    b.load_state_dict(state)
    keys, ids = state["keys"].tolist(), [item["id"] for item in unpack(state)[0]]
    smallest = sorted(zip(keys, ids, strict=True))[:40]
    assert sorted(s.id for s in b.items()) == sorted(i for _, i in smallest)
    assert b.threshold == sorted(keys)[40]


def test_an_algorithm_r_state_still_loads():
    old = {"capacity": 3, "seen": 10, "rng": ReplayBuffer(1).state_dict()["rng"],
           "items": [{"id": str(i), "image": b"x", "text": "t"} for i in range(3)]}  # fmt: skip
    buffer = ReplayBuffer(3, seed=0)
    buffer.load_state_dict(old)
    assert len(buffer) == 3 and buffer.seen == 10 and buffer.threshold == 0.3
    assert max(buffer.state_dict()["keys"]) < 0.3


def _pair(i: int, side: int = 8) -> Pair:
    pixels = torch.full((3, side, side), i % 256, dtype=torch.uint8)
    return Pair(_sample(i, size=500), pixels)


def test_the_pixels_store_keeps_tensors_drops_the_bytes_and_bounds_them():
    budget = 20 * (3 * 8 * 8 + 3)  # twenty residents' pixels and texts
    buffer = ReplayBuffer(1_000, max_bytes=budget, seed=5, store="pixels")
    for i in range(400):
        buffer.add(_pair(i))
        assert buffer.nbytes <= budget
    held = buffer.items()
    assert 0 < len(held) <= 20 and all(isinstance(e, Pair) for e in held)
    assert all(e.sample.image == b"" and e.pixels.dtype == torch.uint8 for e in held)
    assert buffer.nbytes == sum(e.pixels.nbytes + len(e.sample.text) for e in held)
    assert all(torch.equal(e.pixels, _pair(int(e.sample.id)).pixels) for e in held)


def test_the_pixels_store_holds_the_same_samples_as_the_encoded_store():
    encoded, pixels = ReplayBuffer(50, seed=6), ReplayBuffer(50, seed=6, store="pixels")
    for i in range(500):
        encoded.add(_pair(i))
        pixels.add(_pair(i))
    assert [s.id for s in encoded.items()] == [e.sample.id for e in pixels.items()]
    assert [s.id for s in encoded.sample(9)] == [e.sample.id for e in pixels.sample(9)]


def test_float_pixels_are_kept_encoded_by_the_pixels_store():
    buffer = ReplayBuffer(10, seed=0, store="pixels")
    buffer.add(Pair(_sample(0), torch.zeros(3, 8, 8)))  # a preprocessing without uint8 output
    assert isinstance(buffer.items()[0], Sample)


def test_pixels_store_round_trip_through_a_checkpoint_continues_identically(tmp_path):
    budget = 30 * (3 * 8 * 8 + 3)
    a = ReplayBuffer(64, max_bytes=budget, seed=7, store="pixels")
    for i in range(300):
        a.add(_pair(i))
    torch.save(a.state_dict(), tmp_path / "replay.pt")  # what the checkpoint does
    b = ReplayBuffer(64, max_bytes=budget, seed=0, store="pixels")
    b.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    assert b.nbytes == a.nbytes
    for x, y in zip(a.items(), b.items(), strict=True):
        assert x.sample == y.sample and torch.equal(x.pixels, y.pixels)
    for i in range(300, 600):
        a.add(_pair(i))
        b.add(_pair(i))
    assert [e.sample.id for e in a.items()] == [e.sample.id for e in b.items()]
    assert [e.sample.id for e in a.sample(10)] == [e.sample.id for e in b.sample(10)]
    assert a.nbytes == b.nbytes <= budget


def test_an_encoded_checkpoint_loads_into_the_pixels_store_and_back():
    encoded = ReplayBuffer(20, seed=8)
    for i in range(50):
        encoded.add(_sample(i))
    as_pixels = ReplayBuffer(20, seed=8, store="pixels")
    as_pixels.load_state_dict(encoded.state_dict())  # residents stay encoded: decoded on draw
    assert [s.id for s in as_pixels.items()] == [s.id for s in encoded.items()]
    held = ReplayBuffer(20, seed=9, store="pixels")
    for i in range(50):
        held.add(_pair(i))
    back = ReplayBuffer(20, seed=9)
    back.load_state_dict(held.state_dict())  # pixels stay pixels: nothing to decode them from
    assert all(isinstance(e, Pair) for e in back.items()) and back.nbytes == held.nbytes
