"""Evaluation helpers shared by the examples: features, linear probe, few-shot episodes, VQ round trip, PSNR,
Frechet distance.

Everything runs offline on CPU with torch + numpy only.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from .embeddings import check_feature_kind, select_features

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(model, pixel_values: torch.Tensor, batch_size: int = 256, kind: str = "pooler") -> torch.Tensor:
    """`MageModel` features of images (N, C, H, W) in [0, 1] -> (N, D) float32.

    kind: one of `mage_hf.embeddings.FEATURE_KINDS` (`"pooler"`, the original linear-probe feature; `"cls"`;
    `"tokens"`).
    """
    check_feature_kind(kind)
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(pixel_values), batch_size):
        outputs = model(pixel_values=pixel_values[start : start + batch_size].to(device))
        chunks.append(select_features(outputs, kind).float().cpu())
    return torch.cat(chunks)


def logistic_regression_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    inverse_regularization: float = 0.1, max_iter: int = 300,
) -> float:
    """Standardised multinomial logistic regression (L-BFGS), test accuracy.

    The objective is scikit-learn's `LogisticRegression(C=inverse_regularization)`: C * sum of losses + |W|^2 / 2,
    so raw-pixel numbers are comparable with `../shared/data` baselines.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(train_y.max()) + 1
    weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    x64, y = train_x.double(), train_y.long()
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x64 @ weight + bias, y, reduction="sum") * inverse_regularization
        loss = loss + 0.5 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predictions = (test_x.double() @ weight + bias).argmax(1)
    return float((predictions == test_y.long()).double().mean())


def prototype_few_shot(
    support_x: np.ndarray, support_y: np.ndarray, query_x: np.ndarray, query_y: np.ndarray,
    n_way: int = 5, k_shot: int = 1, episodes: int = 600, queries_per_class: int = 15, seed: int = 0,
) -> tuple[float, float]:
    """n-way k-shot accuracy with cosine similarity to class prototypes: (mean, 95% interval half-width).

    Each episode draws `n_way` classes, `k_shot` support examples per class from the support set and
    `queries_per_class` queries per class from the query set (the protocol of `../shared/data/tools/baselines.py`).
    """
    rng = np.random.default_rng(seed)
    support_x = support_x / np.linalg.norm(support_x, axis=1, keepdims=True)
    query_x = query_x / np.linalg.norm(query_x, axis=1, keepdims=True)
    classes = np.unique(support_y)
    accuracies = []
    for _ in range(episodes):
        chosen = rng.choice(classes, n_way, replace=False)
        prototypes = np.stack(
            [support_x[rng.choice(np.flatnonzero(support_y == c), k_shot, replace=False)].mean(0) for c in chosen]
        )
        query_index = np.concatenate(
            [rng.choice(np.flatnonzero(query_y == c), queries_per_class, replace=False) for c in chosen]
        )
        predicted = chosen[np.argmax(query_x[query_index] @ prototypes.T, axis=1)]
        accuracies.append((predicted == query_y[query_index]).mean())
    accuracies = np.asarray(accuracies)
    return float(accuracies.mean()), float(1.96 * accuracies.std() / math.sqrt(len(accuracies)))


def standardize(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Standardise features with the mean and std of `reference` (N, D): returns [reference, *others] transformed.

    The linear probe's feature transform (the original's affine-free BatchNorm), offered for few-shot episodes too:
    cosine similarity on raw transformer features is dominated by a few high-variance dimensions.
    """
    mean, std = reference.mean(0), np.maximum(reference.std(0), 1e-8)
    return [(features - mean) / std for features in (reference, *others)]


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]: (N, C, H, W) x2 -> (N,)."""
    mse = (reconstruction.float().clamp(0, 1) - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def reconstruct(vqvae, pixels: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """A VQ tokenizer's round trip in batches: pixels (N, 3, S, S) in [0, 1] -> token ids (N, h * w) and
    reconstructions (N, 3, S, S) clamped to [0, 1] (`tokenize`, then `decode_tokens`)."""
    tokens = torch.cat([vqvae.tokenize(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])
    recon = torch.cat([vqvae.decode_tokens(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)])
    return tokens, recon.clamp(0, 1)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula), in float64."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.cov(features_a, rowvar=False)
    cov_b = np.cov(features_b, rowvar=False)
    # trace sqrt(cov_a cov_b) from the eigenvalues of sqrt(cov_a) cov_b sqrt(cov_a) (symmetric PSD).
    values, vectors = np.linalg.eigh(cov_a)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
