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


def num_masked_tokens(num_tokens: int, ratio: float) -> int:
    """`ceil(ratio * num_tokens)`: how many tokens a mask (or drop) ratio selects, as the original counts them."""
    return int(math.ceil(num_tokens * ratio))


def random_token_masks(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    drop_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> TokenMasks:
    """Per sample, mask the `ceil(mask_ratio * num_tokens)` tokens with the smallest uniform noise and drop the
    `ceil(drop_ratio * num_tokens)` smallest of those (as the original: one noise draw ranks both sets).

    `noise` (batch, num_tokens), when given, is used instead of a draw (from `generator`, on the CPU so a seed
    gives the same masks on every device): it only orders the tokens, so any real values work; uniform [0, 1)
    noise gives MAGE's distribution. Ranks come from `argsort`, so exactly that many tokens are chosen even when
    two noise values tie (the original redraws the noise in that case; the distribution is the same).
    """
    if not 0 <= drop_ratio <= mask_ratio <= 1:
        raise ValueError(f"need 0 <= drop_ratio <= mask_ratio <= 1, got drop_ratio={drop_ratio}, mask_ratio={mask_ratio}")
    num_masked = num_masked_tokens(num_tokens, mask_ratio)
    num_dropped = num_masked_tokens(num_tokens, drop_ratio)
    if noise is None:
        noise = torch.rand(batch_size, num_tokens, generator=generator, device="cpu").to(device)
    elif not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise TypeError(f"`noise` must be a float tensor of shape (batch, {num_tokens}), got {type(noise).__name__}")
    elif tuple(noise.shape) != (batch_size, num_tokens):
        raise ValueError(f"`noise` must have shape ({batch_size}, {num_tokens}), got {tuple(noise.shape)}")
    else:
        noise = noise.to(device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return TokenMasks(drop_mask=ranks < num_dropped, token_mask=ranks < num_masked)


def gather_kept(sequence: torch.Tensor, drop_mask: torch.BoolTensor, num_kept: int | None = None) -> torch.Tensor:
    """(B, L, D) -> (B, L_kept, D): the positions where `drop_mask` (B, L) is False, in order.

    Every row must keep the same number of positions (checked by the caller). Pass `num_kept` when it is known
    (MAGE's own masks): counting it from the mask costs a host sync and cannot be traced by `torch.export`.
    """
    if num_kept is None:
        num_kept = drop_mask.shape[1] - int(drop_mask[0].sum())
    # A stable sort of the 0/1 drop flags lists kept positions first, in their original order.
    kept_positions = drop_mask.to(torch.int8).argsort(dim=1, stable=True)[:, :num_kept]
    return sequence.gather(1, kept_positions.unsqueeze(-1).expand(-1, -1, sequence.shape[-1]))


def scatter_kept(kept: torch.Tensor, drop_mask: torch.BoolTensor, filler: torch.Tensor) -> torch.Tensor:
    """Inverse of `gather_kept`: put (B, L_kept, D) back at the kept positions of `filler` (B, L, D)."""
    kept_positions = drop_mask.to(torch.int8).argsort(dim=1, stable=True)[:, : kept.shape[1]]
    return filler.scatter(1, kept_positions.unsqueeze(-1).expand(-1, -1, kept.shape[-1]), kept)
