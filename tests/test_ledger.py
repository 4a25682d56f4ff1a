"""The ledger: what is accounted for, and where each partition resumes."""

from __future__ import annotations

from streamer.intake.source import GroupCommit
from streamer.records import id_hash
from streamer.state.ledger import Ledger

P = ("pairs", 0)


def _restored(offset: int | None, lineage: str = "mine") -> Ledger:
    ledger = Ledger(lineage)
    offsets = {} if offset is None else {"pairs:0": offset}
    ledger.restore({"offsets": offsets, "counts": {}, "digest": "0", "lineage": lineage})
    return ledger


def test_accounting_advances_offsets_marks_them_dirty_and_sums_id_hashes():
    ledger = Ledger()
    ledger.advance(P, 41)
    ledger.add_ids(["a", "b"])
    ledger.count("trained", 2)
    assert ledger.offsets == {P: 42} and ledger.dirty and ledger.touches({P})
    assert ledger.digest == (id_hash("a") + id_hash("b")) % 2**64
    ledger.checkpointed()
    assert not ledger.dirty
    shard = ledger.shard()
    again = Ledger()
    again.restore(shard)
    assert (again.offsets, again.counts, again.digest, again.lineage) == (
        ledger.offsets, ledger.counts, ledger.digest, ledger.lineage,
    )  # fmt: skip


def test_a_fresh_partition_follows_the_group_or_the_reset_policy():
    ledger = Ledger("mine")
    assert ledger.resume(P, None) is None
    assert ledger.resume(P, GroupCommit(30, "ckpt-00000009@theirs")) == 30


def test_the_further_of_our_checkpoint_and_another_members_commit_wins():
    assert _restored(50).resume(P, GroupCommit(80, "ckpt-00000002@theirs")) == 80
    assert _restored(90).resume(P, GroupCommit(80, "ckpt-00000002@theirs")) == 90
    assert _restored(90).resume(P, GroupCommit(80, "ckpt-00000002")) == 90  # older format


def test_our_own_commit_past_the_restored_checkpoint_means_retraining_from_it():
    """The newest checkpoint was unreadable; the group's commit came from it. Resuming at
    the commit would skip the records the restored model never saw."""
    ledger = _restored(50)
    assert ledger.resume(P, GroupCommit(80, ledger.commit_metadata("ckpt-00000007"))) == 50
    lost = _restored(None)  # the lost checkpoint was the first to hold this partition
    assert lost.resume(P, GroupCommit(80, lost.commit_metadata("ckpt-00000007"))) == 0


def test_after_a_fallback_a_commit_without_metadata_is_taken_as_ours():
    """Tansu returns no commit metadata: after falling back past an unreadable checkpoint,
    the commit may be that checkpoint's, so the restored offsets decide (train again)."""
    ledger = _restored(50)
    assert ledger.resume(P, GroupCommit(80, "")) == 80  # no fallback: the further one
    ledger.fell_back = True
    assert ledger.resume(P, GroupCommit(80, "")) == 50
    assert ledger.resume(P, GroupCommit(80, "ckpt-00000002@theirs")) == 80  # known: theirs


def test_a_group_offset_below_our_own_commit_is_followed_as_a_reset():
    ledger = _restored(50)
    ledger.advance(P, 99)
    ledger.note_commit({P: 100})
    assert ledger.resume(P, GroupCommit(0, "")) == 0  # topic recreated
    assert P not in ledger.offsets and ledger.committed == {}
    ledger.note_commit({P: 10})
    assert ledger.resume(P, None) is None  # the broker lost it: its reset policy decides


def test_commit_metadata_names_the_checkpoint_and_the_lineage():
    ledger = Ledger("abc")
    assert ledger.commit_metadata("ckpt-00000003") == "ckpt-00000003@abc"
    assert ledger.to_commit({P}) == {}
    ledger.advance(P, 4)
    ledger.advance(("other", 1), 9)
    assert ledger.to_commit({P}) == {P: 5}


def test_a_checkpoint_taken_earlier_leaves_partitions_advanced_since_dirty():
    ledger = Ledger()
    other = ("pairs", 1)
    ledger.advance(P, 41)
    ledger.advance(other, 7)
    held = dict(ledger.offsets)  # the copy a background checkpoint took
    ledger.advance(P, 42)  # training went on while it was written
    ledger.checkpointed(held)
    assert ledger.touches({P}) and not ledger.touches({other})
