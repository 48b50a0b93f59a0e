"""The tuning stages' data order (model/batches.py): batches of exactly batch_size items, every
item once per epoch, and a resume from the state reads what an unbroken run reads."""

from __future__ import annotations

import pytest

from model.batches import EpochBatches


@pytest.mark.parametrize("n, batch", [(10, 3), (8, 8), (5, 8), (935, 8)])
def test_batches_have_batch_size_items_and_each_epoch_every_item_once(n, batch):
    b = EpochBatches(n, batch, seed=7, collate=lambda idx: idx)
    seen = [i for _ in range(3 * n) for i in b.next()]
    assert len(seen) == 3 * n * batch
    for epoch in range(len(seen) // n):
        assert sorted(seen[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert seen[:n] != list(range(n)) or n < 3  # shuffled
    assert EpochBatches(n, batch, seed=8, collate=list).next() != EpochBatches(n, batch, 7, list).next() or n < 3


def test_a_resume_from_the_state_reads_the_same_batches():
    whole = EpochBatches(10, 4, seed=1, collate=lambda idx: idx)
    run = [whole.next() for _ in range(9)]
    first = EpochBatches(10, 4, seed=1, collate=lambda idx: idx)
    head = [first.next() for _ in range(4)]
    resumed = EpochBatches(10, 4, seed=1, collate=lambda idx: idx)
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.next() for _ in range(5)] == run
    assert resumed.position == "epoch 3, item 6 of 10"
    with pytest.raises(ValueError, match="no pairs"):
        EpochBatches(0, 4, 1, list, "pair")
