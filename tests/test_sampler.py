import numpy as np
import pytest

from replearn.errors import UserError
from replearn.training.sampler import PKSampler


def test_batches_hold_p_distinct_classes_of_k_items() -> None:
    labels = np.repeat(np.arange(10), 6)
    sampler = PKSampler(labels, classes_per_batch=4, images_per_class=3, seed=0)
    for iteration in range(20):
        batch = sampler.batch(iteration)
        assert batch.shape == (12,)
        batch_labels = labels[batch].reshape(4, 3)
        assert len(set(batch_labels[:, 0])) == 4
        assert (batch_labels == batch_labels[:, :1]).all()
        assert all(len(set(group)) == 3 for group in batch.reshape(4, 3))  # no repeats when a class has K


def test_small_classes_are_drawn_with_replacement() -> None:
    labels = np.array([0, 1, 1, 1, 1])
    batch = PKSampler(labels, classes_per_batch=2, images_per_class=4, seed=0).batch(0)
    assert sorted(labels[batch].tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_batches_are_reproducible_and_ranks_independent() -> None:
    labels = np.repeat(np.arange(50), 4)
    first = PKSampler(labels, 8, 2, seed=3)
    again = PKSampler(labels, 8, 2, seed=3)
    other_rank = PKSampler(labels, 8, 2, seed=3, rank=1)
    assert all(np.array_equal(first.batch(i), again.batch(i)) for i in range(5))
    assert not np.array_equal(first.batch(0), first.batch(1))
    assert not np.array_equal(first.batch(0), other_rank.batch(0))
    assert not np.array_equal(first.batch(0), PKSampler(labels, 8, 2, seed=4).batch(0))


def test_fewer_classes_than_p_puts_all_in_every_batch(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    sampler = PKSampler(labels, classes_per_batch=8, images_per_class=2, seed=0)
    assert "classes_per_batch=8 but the training split has 3 classes" in caplog.text
    assert sampler.batch_size == 6
    assert all(sorted(set(labels[sampler.batch(i)])) == [0, 1, 2] for i in range(5))


def test_one_class_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="the training split has 1 class; training needs at least 2"):
        PKSampler(np.array([0, 0, 0]), classes_per_batch=8, images_per_class=2, seed=0)
