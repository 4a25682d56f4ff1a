"""Scale-out pieces: partition shares, checkpoint shards, rank labels, and two gloo ranks
whose combined gradient is checked against one process learning from the union batch."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest

from streamer.learning.distributed import World
from streamer.records import id_hash
from streamer.service.collectors import with_rank
from streamer.service.pipeline import build_engine
from streamer.state import snapshot

from .conftest import tiny_settings


def test_partition_shares_are_fixed_disjoint_and_cover_the_topic():
    partitions = [5, 0, 3, 1, 4, 2, 6]
    shares = [World(rank, 3).owns(partitions) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert World(0, 1).owns(partitions) == sorted(partitions)
    assert World(3, 4).owns([0, 1]) == []  # more ranks than partitions: zero-weight steps


def _shard(offsets: dict[str, int], trained: int, ids: list[str]) -> snapshot.Shard:
    ledger = {"offsets": offsets, "counts": {"trained": trained},
              "digest": str(sum(id_hash(i) for i in ids) % 2**64), "lineage": "L"}  # fmt: skip
    return {"learner": {"samples": trained}, "replay": {"r": trained}, "evaluator": {},
            "ledger": ledger, "fingerprint": "f"}  # fmt: skip


def test_merged_meta_sums_counts_and_takes_each_partition_from_its_furthest_rank():
    shards = [_shard({"t:0": 10, "t:1": 3}, 7, ["a", "b"]), _shard({"t:1": 9}, 5, ["c"])]
    state, meta = snapshot.merge(shards, {"opt": 1}, {"step": 4})
    assert meta["counts"] == {"trained": 12} and meta["offsets"] == {"t:0": 10, "t:1": 9}
    assert int(meta["digest"]) == sum(id_hash(i) for i in "abc") % 2**64
    assert meta["world_size"] == 2 and meta["step"] == 4
    assert "fingerprint" not in state["ranks"][0] and state["optimizer"] == {"opt": 1}


def test_a_smaller_world_folds_totals_into_rank_0_and_a_larger_one_starts_new_ranks_empty():
    shards = [_shard({"t:0": 10}, 7, ["a"]), _shard({"t:1": 9}, 5, ["b"])]
    state, meta = snapshot.merge(shards, {}, {})
    one = snapshot.split(state, meta, 1)
    assert one[0]["ledger"]["counts"] == {"trained": 12}
    assert int(one[0]["ledger"]["digest"]) == int(meta["digest"])
    three = snapshot.split(state, meta, 3)
    assert [s["ledger"]["counts"] for s in three] == [{"trained": 7}, {"trained": 5}, {}]
    assert three[2]["replay"] is None and three[2]["learner"]["samples"] == 0
    assert all(s["ledger"]["offsets"] == {"t:0": 10, "t:1": 9} for s in three)


def test_the_weights_fingerprint_covers_scalars_and_changes_with_any_bit():
    weights = {"logit_scale": torch.tensor(2.6593), "w": torch.ones(2, 3)}
    before = snapshot.fingerprint(weights)
    weights["w"][1, 2] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert snapshot.fingerprint(weights) != before


def test_every_sample_served_by_a_rank_carries_its_rank_label():
    registry = CollectorRegistry()
    Gauge("streamer_demo", "A gauge.", ["window"], registry=registry).labels("w0").set(3)
    text = generate_latest(with_rank(registry, 1)).decode()
    assert 'streamer_demo{rank="1",window="w0"} 3.0' in text


# -- two gloo ranks in spawned processes ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads(engine) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in engine.model.trainable_parameters().items()}


def _rank(rank: int, port: int, out: Path, samples: list) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=60))  # fmt: skip
    world = World(rank, 2, joined=True)
    # A rank without data: a zero-weight step that leaves the update exactly rank 0's own
    # (bit for bit: the mean scales by 8 and back, exact in floating point).
    cfg = {"replay_per_step": 0, "steps_per_batch": 2}
    no_probes = {"probe_fraction": 0.0}
    engine = build_engine(tiny_settings(learner=cfg, evaluation=no_probes), world)
    batch = [engine.to_pair(s) for s in samples[:8]] if rank == 0 else []
    engine.learn(batch, step_anyway=True)
    results: dict = {"weights": engine.model.trainable_state(), "steps": engine.learner.steps}
    if rank == 0:
        alone = build_engine(tiny_settings(learner=cfg, evaluation=no_probes))
        alone.learn([alone.to_pair(s) for s in samples[:8]])
        results["alone"] = alone.model.trainable_state()
    # Global SIT: the two ranks' combined gradient against one process on the union batch.
    # Full tuning, so the temperature (used by both ranks) learns too.
    exact = {"loss": "sit", "grad_clip": None, "steps_per_batch": 1, "replay_per_step": 0}
    full = {"peft": {"mode": "full"}, "arch": "streamer-tiny"}
    gather = {"gather_features": True}
    gathered = build_engine(tiny_settings(learner=exact, model=full, distributed=gather), world)
    mine = [gathered.to_pair(s) for s in samples[rank * 8 : rank * 8 + 8]]
    gathered.learner._update(mine)
    results["gathered"] = _grads(gathered)
    # The daemon's path: test-then-train on one rank while the other has no data.
    gathered.learn(mine if rank == 0 else [], step_anyway=True)
    results["gathered_steps"] = gathered.learner.steps
    if rank == 0:
        single = build_engine(tiny_settings(learner=exact, model=full))
        single.learner._update([single.to_pair(s) for s in samples[:16]])
        results["union"] = _grads(single)
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, digit_stream) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    # Labels shared across ranks: positives of one text live on both ranks.
    samples = [s for s in digit_stream if s.label in {"two", "five", "seven"}][:16]
    mp.spawn(_rank, args=(_free_port(), out, samples), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_gathered_sit_gives_every_rank_the_gradient_of_sit_on_the_union_batch(two_ranks):
    union, first, second = two_ranks[0]["union"], two_ranks[0]["gathered"], two_ranks[1]["gathered"]
    assert all(torch.equal(first[n], second[n]) for n in first)  # the same on both ranks
    for name, grad in union.items():
        torch.testing.assert_close(first[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_rank_without_data_takes_the_same_step_and_changes_nothing(two_ranks):
    first, second = two_ranks[0]["weights"], two_ranks[1]["weights"]
    assert all(torch.equal(first[n], second[n]) for n in first)  # bit-identical replicas
    assert all(torch.equal(first[n], two_ranks[0]["alone"][n]) for n in first)
    assert two_ranks[0]["steps"] == two_ranks[1]["steps"] == 1
    assert two_ranks[0]["gathered_steps"] == two_ranks[1]["gathered_steps"] == 1
