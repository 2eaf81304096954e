"""MAGE-C's contrastive term: a small projection head on the encoder's pooled features and a SimCLR-style
InfoNCE loss between two augmented (and independently masked) views of each image.

The authors never released this part of their code; this follows the paper's description (projection head
on the pooled encoder output, InfoNCE with a temperature, added to the token loss with a weight).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..configuration_mage import MageConfig


class MageContrastiveHead(nn.Module):
    """Pooled features (B, D) -> projections (B, contrastive_projection_dim): Linear, GELU, Linear."""

    def __init__(self, config: MageConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.GELU()
        self.projection = nn.Linear(config.hidden_size, config.contrastive_projection_dim)
        for linear in (self.dense, self.projection):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.projection(self.act(self.dense(pooled)))


def info_nce_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2B projections: row i of `first` (B, P) and row i of `second` are positives, the other
    2B - 2 rows negatives; cosine similarities / `temperature`; mean over both directions."""
    if first.shape != second.shape:
        raise ValueError(f"the two views must have the same shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    if temperature <= 0:
        raise ValueError(f"`contrastive_temperature` must be > 0, got {temperature}")
    batch = first.shape[0]
    features = F.normalize(torch.cat([first, second]).float(), dim=1)
    logits = features @ features.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=logits.device), float("-inf"))
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)]).to(logits.device)
    return F.cross_entropy(logits, targets)
