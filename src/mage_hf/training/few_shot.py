"""n-way k-shot evaluation on fixed embeddings: random episodes, a prototype classifier (cosine to the class
mean) and a logistic-regression classifier, mean accuracy with a 95% interval; and the support draw shared by
few-shot fine-tuning and the fixed-test protocol (`few_shot_indices`, `few_shot_subset`)."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from torch.nn import functional as F

from .data import SAMPLE_INDEX_COLUMN, ImageData, load_image_data


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


def few_shot_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` random rows of every class (all rows of smaller classes): the support draw
    of seed `seed`. labels (N,) -> (<= per_class * num_classes,)."""
    if per_class < 1:
        raise ValueError(f"`per_class` must be a positive integer, got {per_class}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())), replace=False)
            for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def few_shot_subset(dataset: datasets.Dataset, label_column: str, per_class: int, seed: int) -> datasets.Dataset:
    """`per_class` random rows of every class (all rows of smaller classes), in index order (`few_shot_indices`)."""
    return dataset.select(few_shot_indices(np.asarray(dataset[label_column]), per_class, seed).tolist())


def _is_npz(source: str) -> bool:
    return source.endswith(".npz") and os.path.isfile(source)


def split_labels(source: str, split: str, label_column: str | None = None, max_samples: int | None = None,
                 argument: str = "train_data") -> np.ndarray:
    """(N,) integer labels of `split` (its first `max_samples` rows). An `.npz` is read without decoding its
    images; other sources go through `load_image_data`."""
    if _is_npz(source) and label_column is None:
        with np.load(source, allow_pickle=False) as arrays:
            if f"y_{split}" in arrays.files:
                return arrays[f"y_{split}"][:max_samples].astype(np.int64)
    data = load_image_data(source, split, None, label_column, max_samples, argument=argument)
    if data.label_column is None:
        raise ValueError(f"`{argument}` {source!r} has no labels for split {split!r} (a label column, y_{split} or class folders)")
    return np.asarray(data.dataset[data.label_column], dtype=np.int64)


def load_image_rows(source: str, split: str, indices: np.ndarray, image_column: str | None = None,
                    label_column: str | None = None, max_samples: int | None = None,
                    argument: str = "train_data") -> ImageData:
    """Rows `indices` (sorted, of the first `max_samples`) of `load_image_data(source, split, ...)`, keeping their
    `sample_index` (so the augmentations are those of the whole split's rows). An `.npz` has only those images
    built into the `datasets` column: building the column for a whole 60,000-image split takes longer than a
    few-shot fine-tuning run."""
    indices = np.asarray(indices, dtype=np.int64)
    if not _is_npz(source) or image_column is not None or label_column is not None:
        data = load_image_data(source, split, image_column, label_column, max_samples, argument=argument)
        data.dataset = data.dataset.select(indices.tolist())
        return data
    with np.load(source, allow_pickle=False) as arrays:
        subset = {key: arrays[key][:max_samples][indices] for key in (f"x_{split}", f"y_{split}") if key in arrays.files}
        if f"y_{split}" in arrays.files:
            labels = arrays[f"y_{split}"][:max_samples]
            subset["class_names"] = (arrays["class_names"] if "class_names" in arrays.files
                                     else np.array([str(i) for i in range(int(labels.max()) + 1)]))
    with tempfile.TemporaryDirectory() as scratch:
        # The subset goes through the same loader (same checks, features and class names) as the whole file.
        path = os.path.join(scratch, "rows.npz")
        np.savez(path, **subset)
        data = load_image_data(path, split, argument=argument)
    data.dataset = data.dataset.remove_columns(SAMPLE_INDEX_COLUMN).add_column(SAMPLE_INDEX_COLUMN, indices)
    return data


def load_few_shot_data(source: str, split: str, per_class: int, seed: int, image_column: str | None = None,
                       label_column: str | None = None, max_samples: int | None = None,
                       argument: str = "train_data") -> ImageData:
    """The support set of seed `seed`: `few_shot_subset(load_image_data(...), per_class, seed)`, with an `.npz`
    read without building the images that are not drawn."""
    if _is_npz(source) and image_column is None and label_column is None:
        labels = split_labels(source, split, None, max_samples, argument)
        return load_image_rows(source, split, few_shot_indices(labels, per_class, seed), max_samples=max_samples,
                               argument=argument)
    data = load_image_data(source, split, image_column, label_column, max_samples, argument=argument)
    if data.label_column is None:
        raise ValueError(f"`{argument}` {source!r} has no labels for split {split!r} (a label column, y_{split} or class folders)")
    data.dataset = few_shot_subset(data.dataset, data.label_column, per_class, seed)
    return data
