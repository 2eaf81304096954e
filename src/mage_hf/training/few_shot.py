"""n-way k-shot evaluation on fixed embeddings: random episodes, a prototype classifier (cosine to the class
mean) and a logistic-regression classifier, mean accuracy with a 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass
class Episode:
    """Indices into the feature matrix and episode-local labels in [0, n_way)."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def sample_episode(labels: np.ndarray, n_way: int, k_shot: int, n_query: int, rng: np.random.Generator) -> Episode:
    """`n_way` random classes with at least `k_shot + n_query` examples; `k_shot` support and `n_query` query
    examples per class, disjoint."""
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= k_shot + n_query]
    if len(eligible) < n_way:
        raise ValueError(
            f"`n_way` {n_way} needs {n_way} classes with >= {k_shot + n_query} examples (k_shot + n_query); "
            f"only {len(eligible)} have that many"
        )
    chosen = rng.choice(eligible, size=n_way, replace=False)
    support, support_labels, query, query_labels = [], [], [], []
    for local, cls in enumerate(chosen):
        picks = rng.choice(np.flatnonzero(labels == cls), size=k_shot + n_query, replace=False)
        support += list(picks[:k_shot])
        query += list(picks[k_shot:])
        support_labels += [local] * k_shot
        query_labels += [local] * n_query
    return Episode(np.array(support), np.array(support_labels), np.array(query), np.array(query_labels))


def prototype_accuracy(features: torch.Tensor, episode: Episode, n_way: int) -> float:
    """Cosine similarity to each class's mean (L2-normalised) support feature."""
    support = F.normalize(features[episode.support], dim=1)
    prototypes = torch.stack([support[torch.from_numpy(episode.support_labels == c)].mean(0) for c in range(n_way)])
    scores = F.normalize(features[episode.query], dim=1) @ F.normalize(prototypes, dim=1).t()
    return float((scores.argmax(1).numpy() == episode.query_labels).mean())


def logistic_regression_accuracy(features: torch.Tensor, episode: Episode, n_way: int, l2: float = 1e-3,
                                 max_iter: int = 100) -> float:
    """Multinomial logistic regression (L-BFGS, L2 penalty `l2`) on L2-normalised, support-centred features."""
    support, query = F.normalize(features[episode.support], dim=1), F.normalize(features[episode.query], dim=1)
    mean = support.mean(0, keepdim=True)
    support, query = support - mean, query - mean
    targets = torch.from_numpy(episode.support_labels)
    weight = torch.zeros(support.shape[1], n_way, requires_grad=True)
    bias = torch.zeros(n_way, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(support @ weight + bias, targets) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predictions = (query @ weight + bias).argmax(1).numpy()
    return float((predictions == episode.query_labels).mean())


def mean_and_interval(accuracies: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval (1.96 x standard error)."""
    values = np.asarray(accuracies, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


CLASSIFIERS = {"prototype": prototype_accuracy, "logistic": logistic_regression_accuracy}


def evaluate_few_shot(features: np.ndarray, labels: np.ndarray, n_way: int, k_shot: int, n_query: int,
                      episodes: int, seed: int, classifiers=("prototype", "logistic")) -> dict[str, tuple[float, float]]:
    """Accuracy (mean, 95% half-width) per classifier over `episodes` random episodes (the same episodes for
    every classifier)."""
    unknown = [name for name in classifiers if name not in CLASSIFIERS]
    if unknown:
        raise ValueError(f"unknown classifiers {unknown}; expected some of {sorted(CLASSIFIERS)}")
    rng = np.random.default_rng(seed)
    tensor = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    results = {name: [] for name in classifiers}
    for _ in range(episodes):
        episode = sample_episode(labels, n_way, k_shot, n_query, rng)
        for name in classifiers:
            results[name].append(CLASSIFIERS[name](tensor, episode, n_way))
    return {name: mean_and_interval(values) for name, values in results.items()}
