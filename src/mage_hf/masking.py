"""MAGE's pre-training masking: a variable mask ratio per batch, a fixed fraction dropped from the encoder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def sample_mask_ratio(
    mean: float, std: float, low: float, high: float, generator: torch.Generator | None = None
) -> float:
    """One draw from a Gaussian(mean, std) truncated to [low, high] (the original's `scipy.stats.truncnorm`).

    Sampled by inverting the CDF, with torch's generator so runs are reproducible without scipy.
    """
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    cdf_low = normal.cdf(torch.tensor((low - mean) / std, dtype=torch.float64))
    cdf_high = normal.cdf(torch.tensor((high - mean) / std, dtype=torch.float64))
    uniform = torch.rand((), generator=generator, dtype=torch.float64)
    ratio = mean + std * normal.icdf(cdf_low + uniform * (cdf_high - cdf_low))
    return float(ratio.clamp(low, high))


@dataclass
class TokenMasks:
    """Masks over the image tokens, each (batch, num_tokens) bool, True where it applies.

    `drop_mask` tokens are removed from the encoder input; `token_mask` tokens are hidden (replaced by the mask
    token if kept, predicted by the loss). Every dropped token is also masked.
    """

    drop_mask: torch.BoolTensor
    token_mask: torch.BoolTensor


def random_token_masks(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    drop_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> TokenMasks:
    """Per sample, mask the `ceil(mask_ratio * num_tokens)` tokens with the smallest uniform noise and drop the
    `ceil(drop_ratio * num_tokens)` smallest of those (as the original: one noise draw ranks both sets).

    Ranks come from `argsort`, so exactly that many tokens are chosen even when two noise values tie (the
    original redraws the noise in that case; the distribution is the same).
    """
    if not 0 <= drop_ratio <= mask_ratio <= 1:
        raise ValueError(f"need 0 <= drop_ratio <= mask_ratio <= 1, got drop_ratio={drop_ratio}, mask_ratio={mask_ratio}")
    num_masked = int(math.ceil(num_tokens * mask_ratio))
    num_dropped = int(math.ceil(num_tokens * drop_ratio))
    noise = torch.rand(batch_size, num_tokens, generator=generator, device="cpu").to(device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return TokenMasks(drop_mask=ranks < num_dropped, token_mask=ranks < num_masked)
