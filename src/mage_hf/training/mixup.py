"""Batch-level mixup / cutmix with label-smoothed soft targets (what timm's `Mixup(mode="batch")` does for the
original fine-tuning), written on torch. Each batch is mixed with itself in reverse order."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def smooth_one_hot(labels: torch.LongTensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) -> (B, C): 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about 1 - lam of the image, centred uniformly, clipped: (top, bottom, left, right)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return top, bottom, left, right


@dataclass
class MixupCutmix:
    """Mix a batch: with probability `prob`, cutmix (chosen with probability `switch_prob` when both are on,
    Beta(cutmix_alpha) area) or mixup (Beta(mixup_alpha) weight); targets are mixed smoothed one-hots.

    The original fine-tuning uses mixup 0.8, cutmix 1.0, prob 1, switch 0.5, smoothing 0.1.
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, images: torch.Tensor, labels: torch.LongTensor, rng: np.random.Generator):
        """images (B, C, H, W), labels (B,) -> (mixed images, soft targets (B, num_classes))."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if not self.active or rng.random() >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        images = images.clone()
        if use_cutmix:
            lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            top, bottom, left, right = cutmix_box(images.shape[-2], images.shape[-1], lam, rng)
            images[..., top:bottom, left:right] = images.flip(0)[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (images.shape[-2] * images.shape[-1])
        else:
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            images = images * lam + images.flip(0) * (1.0 - lam)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)
