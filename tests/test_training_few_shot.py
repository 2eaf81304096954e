"""Few-shot episodes and classifiers, mixup/cutmix targets, accuracy helpers."""

import numpy as np
import pytest
import torch

from mage_hf.training.few_shot import evaluate_few_shot, mean_and_interval, sample_episode
from mage_hf.training.metrics import accuracy, top_k_accuracy
from mage_hf.training.mixup import MixupCutmix, smooth_one_hot

pytestmark = pytest.mark.usefixtures("single_thread")


def test_episode_is_disjoint_and_balanced():
    labels = np.repeat(np.arange(6), 10)
    episode = sample_episode(labels, n_way=3, k_shot=2, n_query=4, rng=np.random.default_rng(0))
    assert len(episode.support) == 6 and len(episode.query) == 12
    assert not set(episode.support) & set(episode.query)
    assert np.bincount(episode.query_labels).tolist() == [4, 4, 4]
    for index, local in zip(episode.support, episode.support_labels):
        same_class = episode.query[episode.query_labels == local]
        assert (labels[same_class] == labels[index]).all()
    with pytest.raises(ValueError, match="n_way"):
        sample_episode(labels, n_way=7, k_shot=2, n_query=4, rng=np.random.default_rng(0))


def test_classifiers_solve_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 5
    labels = np.repeat(np.arange(5), 30)
    features = centres[labels] + rng.normal(size=(150, 16))
    results = evaluate_few_shot(features, labels, n_way=5, k_shot=1, n_query=5, episodes=8, seed=0)
    for mean, interval in results.values():
        assert mean > 0.9 and 0 <= interval < 0.1
    assert mean_and_interval([0.5, 0.7]) == pytest.approx((0.6, 1.96 * np.std([0.5, 0.7], ddof=1) / np.sqrt(2)))


def test_mixup_cutmix_targets_sum_to_one():
    images = torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 1])
    for cutmix_only in (True, False):
        mixer = MixupCutmix(num_classes=3, mixup_alpha=0.0 if cutmix_only else 0.8, cutmix_alpha=1.0 if cutmix_only else 0.0)
        mixed, targets = mixer(images, labels, np.random.default_rng(1))
        assert mixed.shape == images.shape and targets.shape == (4, 3)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        assert 0 <= mixed.min() and mixed.max() <= 1
    assert torch.allclose(smooth_one_hot(torch.tensor([2]), 4, 0.1), torch.tensor([[0.025, 0.025, 0.925, 0.025]]))


def test_accuracy_helpers():
    assert accuracy(np.array([1, 2, 3]), np.array([1, 2, 0])) == pytest.approx(2 / 3)
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.02, 0.08]])
    assert top_k_accuracy(logits, np.array([2, 1]), 2) == 0.5
