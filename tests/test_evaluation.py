"""mage_hf.evaluation: the numbers the default-model evaluation reports."""

import numpy as np
import pytest
import torch

from mage_hf import MageVQModel
from mage_hf.evaluation import (
    frechet_distance,
    logistic_regression_probe,
    prototype_few_shot,
    psnr,
    reconstruct,
    standardize,
)


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by (1, 2, 0): distance = |shift|^2.
    assert frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, abs=1e-6)
    # Isotropic Gaussians with std 1 and 2 in d dims: d * (1 - 2)^2.
    b = rng.normal(size=(200000, 3))
    assert frechet_distance(b, 2 * rng.normal(size=(200000, 3))) == pytest.approx(3.0, rel=0.02)


def test_psnr_of_known_error():
    target = torch.zeros(2, 3, 4, 4)
    assert torch.allclose(psnr(target + 0.1, target), torch.full((2,), 20.0))


def test_probe_and_few_shot_on_separable_data():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 6
    labels = torch.arange(4).repeat(50)
    features = centres[labels] + torch.randn(200, 4, generator=generator)
    assert logistic_regression_probe(features, labels, features, labels) > 0.95
    mean, interval = prototype_few_shot(features.numpy(), labels.numpy(), features.numpy(), labels.numpy(),
                                        n_way=3, k_shot=2, episodes=50, queries_per_class=5)
    assert mean > 0.95 and 0 <= interval < 0.05
    noise = torch.randn(200, 4, generator=generator)
    assert logistic_regression_probe(noise, labels, noise, labels) < 0.6


def test_standardize_uses_reference_statistics_and_rescues_cosine_from_an_outlier_dimension():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)
    # Dimension 0 is large noise carrying no class; dimensions 1-3 carry the class at a small scale.
    features = np.concatenate([50 * rng.normal(size=(180, 1)), np.eye(3)[labels] + 0.3 * rng.normal(size=(180, 3))], 1)
    queries = features[::2] + 0.1
    reference, transformed = standardize(features, queries)
    np.testing.assert_allclose(reference.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(reference.std(0), 1, atol=1e-9)
    np.testing.assert_allclose(transformed, (queries - features.mean(0)) / features.std(0))
    plain, _ = prototype_few_shot(features, labels, features, labels, n_way=3, k_shot=1, episodes=100, queries_per_class=5)
    scaled, _ = prototype_few_shot(reference, labels, reference, labels, n_way=3, k_shot=1, episodes=100, queries_per_class=5)
    assert plain < 0.6 < 0.8 < scaled


def test_reconstruct_batches_the_round_trip():
    torch.manual_seed(0)
    vqvae = MageVQModel(base_channels=32, channel_multipliers=[1, 2], num_res_blocks=1, latent_channels=32,
                        codebook_size=16, sample_size=16).eval()
    pixels = torch.rand(5, 3, 16, 16)
    tokens, recon = reconstruct(vqvae, pixels, batch_size=2)  # batches of 2, 2 and 1
    with torch.no_grad():
        expected_tokens = vqvae.tokenize(pixels)
        expected = vqvae.decode_tokens(expected_tokens).clamp(0, 1)
    assert torch.equal(tokens, expected_tokens) and tokens.shape == (5, 64)  # one row of 8 x 8 ids per image
    assert torch.allclose(recon, expected, atol=1e-5) and recon.min() >= 0 and recon.max() <= 1
