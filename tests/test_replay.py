"""Reservoir buffer: uniform inclusion, sampling without replacement, budget, state."""

from __future__ import annotations

import random

from streamer.records import Sample
from streamer.replay import ReplayBuffer

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


def test_the_uniformity_check_rejects_a_biased_buffer():
    # A "keep the latest" buffer of the same size must fail the same statistic.
    n, capacity, runs, bins = 100_000, 500, 10, 50
    held = [list(range(n - capacity, n)) for _ in range(runs)]
    assert _chi_square(_inclusion_counts(held, n, bins)) > CHI2_49_P001
    rng = random.Random(0)  # and half-uniform over the first half only
    held = [rng.sample(range(n // 2), capacity) for _ in range(runs)]
    assert _chi_square(_inclusion_counts(held, n, bins)) > CHI2_49_P001


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


def test_state_round_trip_continues_identically():
    a = ReplayBuffer(64, seed=3)
    for i in range(1_000):
        a.add(_sample(i))
    b = ReplayBuffer(64, seed=999)
    b.load_state_dict(a.state_dict())
    for i in range(1_000, 2_000):
        a.add(_sample(i))
        b.add(_sample(i))
    assert [s.id for s in a.items()] == [s.id for s in b.items()]
    assert [s.id for s in a.sample(10)] == [s.id for s in b.sample(10)]
    assert a.nbytes == b.nbytes
