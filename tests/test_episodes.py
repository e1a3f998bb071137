"""The N-way K-shot episode sampler."""

from __future__ import annotations

import pytest
import torch

from gbml.data.tasks import EpisodeSampler


@pytest.fixture
def images():
    # 12 classes x 20 examples; each image is filled with a unique id so it can be traced back.
    ids = torch.arange(12 * 20, dtype=torch.int32).view(12, 20, 1, 1, 1)
    return ids.expand(12, 20, 1, 4, 4).contiguous()


def ids(x):
    return x[:, 0, 0, 0].long().tolist()


def test_shapes_and_label_ranges(images):
    ep = EpisodeSampler(images.to(torch.uint8), ways=5, shots=2, queries=3, seed=0).sample()
    assert ep.support_x.shape == (10, 1, 4, 4) and ep.query_x.shape == (15, 1, 4, 4)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(ep.query_y.tolist()) == sorted([0, 1, 2, 3, 4] * 3)
    assert ep.support_x.dtype == torch.float32 and 0.0 <= ep.support_x.min() <= ep.support_x.max() <= 1.0


def test_support_and_query_never_overlap_and_labels_match_classes():
    ids_tensor = torch.arange(12 * 20).view(12, 20, 1, 1, 1).float()
    sampler = EpisodeSampler(ids_tensor, ways=5, shots=3, queries=4, seed=1)
    for _ in range(20):
        ep = sampler.sample()
        # the sampler divides by 255; undo it to recover ids
        s = (ep.support_x[:, 0, 0, 0] * 255).round().long()
        q = (ep.query_x[:, 0, 0, 0] * 255).round().long()
        assert not set(s.tolist()) & set(q.tolist())
        for label in range(5):
            classes = {i // 20 for i in s[ep.support_y == label].tolist() + q[ep.query_y == label].tolist()}
            assert len(classes) == 1


def test_same_seed_same_episodes_other_seed_other_episodes(images):
    a = EpisodeSampler(images, 5, 1, 1, seed=3).sample_batch(4)
    b = EpisodeSampler(images, 5, 1, 1, seed=3).sample_batch(4)
    c = EpisodeSampler(images, 5, 1, 1, seed=4).sample_batch(4)
    assert all(torch.equal(x.support_x, y.support_x) for x, y in zip(a, b))
    assert not all(torch.equal(x.support_x, y.support_x) for x, y in zip(a, c))


def test_sampler_state_restores_the_stream(images):
    sampler = EpisodeSampler(images, 5, 1, 1, seed=0)
    sampler.sample()
    state = sampler.state_dict()
    expected = sampler.sample()
    sampler.load_state_dict(state)
    assert torch.equal(sampler.sample().support_x, expected.support_x)


def test_impossible_episodes_are_refused_with_the_reason(images):
    with pytest.raises(ValueError, match="ways=13 exceeds the 12 classes"):
        EpisodeSampler(images, ways=13, shots=1, queries=1, seed=0)
    with pytest.raises(ValueError, match="exceeds the 20 examples"):
        EpisodeSampler(images, ways=5, shots=15, queries=6, seed=0)


def test_classes_of_different_sizes_never_yield_their_padding(images):
    counts = torch.tensor([20, 5] * 6)          # odd classes hold 5 real images, then padding
    sampler = EpisodeSampler(images, ways=12, shots=2, queries=3, seed=0, counts=counts)
    for _ in range(20):
        ep = sampler.sample()
        for x in (ep.support_x, ep.query_x):
            for image_id in ids(x):
                cls, index = divmod(image_id, 20)
                assert index < counts[cls]
    with pytest.raises(ValueError, match="exceeds the 5 examples of the smallest class"):
        EpisodeSampler(images, ways=5, shots=3, queries=3, seed=0, counts=counts)


def test_equal_counts_draw_exactly_what_no_counts_draw(images):
    plain = EpisodeSampler(images, 5, 2, 3, seed=7).sample_batch(3)
    counted = EpisodeSampler(images, 5, 2, 3, seed=7, counts=torch.full((12,), 20)).sample_batch(3)
    for a, b in zip(plain, counted):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
