"""Judging generated samples offline: a small CNN trained on real labelled images says whether each sample shows
the requested class, and its penultimate features give a Frechet distance to real test images (the FID formula in
a feature space built here, without downloading an Inception network). Used by `examples/evaluate_default.py`,
`examples/sampling_curves.py` and `examples/evaluate_tokenizer.py`; `load_or_train_sample_judge` lets them share one
saved judge (the trained weights differ slightly with the number of CPU threads, and training takes minutes).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers.utils import logging

from .atomic_io import atomic_output_path
from .evaluation import frechet_distance

logger = logging.get_logger(__name__)

# The `--judge` flag of the evaluation scripts (`load_or_train_sample_judge`).
JUDGE_FILE_HELP = ("a .safetensors file: the sample judge is loaded from it when it was trained on the same images "
                   "with the same settings, else trained and saved there (one judge for several scripts and thread "
                   "counts)")


class SampleJudgeCNN(nn.Module):
    """Two conv blocks and two linear layers: (N, C, S, S) -> logits (N, num_classes); `features` (N, feature_dim).
    `S` must be a multiple of 4."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32, feature_dim: int = 128):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"`image_size` must be a multiple of 4, got {image_size}")
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(images).flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_sample_judge(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int, num_classes: int | None = None,
                       batch_size: int = 128, learning_rate: float = 1e-3) -> SampleJudgeCNN:
    """Train a `SampleJudgeCNN` on real images (N, C, S, S) in [0, 1] with labels (N,) (Adam, seeded)."""
    torch.manual_seed(seed)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    judge = SampleJudgeCNN(num_classes, images.shape[1], images.shape[-1])
    optimizer = torch.optim.Adam(judge.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(judge(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        logger.info(f"judge epoch {epoch}: last batch loss {loss.item():.3f}")
    return judge.eval()


def _judge_settings(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int, num_classes: int,
                    batch_size: int, learning_rate: float) -> dict[str, str]:
    """What a saved judge was trained on and with, as safetensors metadata (strings)."""
    digest = hashlib.sha256(images.detach().float().contiguous().numpy())  # hashes the buffer, no copy
    digest.update(labels.detach().long().contiguous().numpy())
    return {"epochs": str(epochs), "seed": str(seed), "num_classes": str(num_classes), "batch_size": str(batch_size),
            "learning_rate": repr(float(learning_rate)), "images_shape": "x".join(map(str, images.shape)),
            "data_sha256": digest.hexdigest()}


def load_or_train_sample_judge(path: str | None, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int,
                               num_classes: int | None = None, batch_size: int = 128,
                               learning_rate: float = 1e-3) -> SampleJudgeCNN:
    """`train_sample_judge(...)`, kept in the safetensors file `path`: loaded when it was trained on the same images
    and labels with the same settings, else trained and written there (atomically). A file trained otherwise is an
    error, never replaced. `path=None` trains in memory."""
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if path is None:
        return train_sample_judge(images, labels, epochs, seed, num_classes, batch_size, learning_rate)
    settings = _judge_settings(images, labels, epochs, seed, num_classes, batch_size, learning_rate)
    if os.path.exists(path):
        with safe_open(path, framework="pt") as handle:
            saved = handle.metadata() or {}
        different = [f"{key} {saved.get(key)!r} (this run: {value!r})" for key, value in settings.items()
                     if saved.get(key) != value]
        if different:
            raise ValueError(f"`judge` {path!r} was trained otherwise: {'; '.join(different)}; pass another path or "
                             f"delete it")
        judge = SampleJudgeCNN(num_classes, images.shape[1], images.shape[-1])
        judge.load_state_dict(load_file(path))
        logger.info(f"sample judge loaded from {path}")
        return judge.eval()
    judge = train_sample_judge(images, labels, epochs, seed, num_classes, batch_size, learning_rate)
    with atomic_output_path(path) as partial:
        save_file({name: value.contiguous() for name, value in judge.state_dict().items()}, partial, metadata=settings)
    logger.info(f"sample judge saved to {path}")
    return judge


@torch.no_grad()
def judge_outputs(judge: SampleJudgeCNN, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, np.ndarray]:
    """Logits (N, num_classes) and float64 features (N, feature_dim) of images (N, C, S, S)."""
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        feats = judge.features(images[start : start + batch_size])
        features.append(feats)
        logits.append(judge.head(feats))
    return torch.cat(logits), torch.cat(features).double().numpy()


@dataclass
class SampleQuality:
    """`class_accuracy`: fraction of samples the judge labels as requested; `fid`: Frechet distance of the
    samples' judge features to the reference (real test) features."""

    class_accuracy: float
    fid: float


def judge_samples(judge: SampleJudgeCNN, samples: torch.Tensor, requested: torch.Tensor,
                  reference_features: np.ndarray) -> SampleQuality:
    """Quality of samples (N, C, S, S) generated for classes `requested` (N,)."""
    logits, features = judge_outputs(judge, samples)
    accuracy = float((logits.argmax(1) == requested).float().mean())
    return SampleQuality(accuracy, frechet_distance(features, reference_features))
