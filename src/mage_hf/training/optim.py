"""Optimizer parameter groups as the original MAGE code builds them.

- Pre-training (timm `add_weight_decay`): no weight decay on 1-D parameters (norm scales, biases) or on any
  parameter whose name ends in `.bias`; everything else (linear/embedding weights, the decoder's learned
  position embedding) decays.
- Fine-tuning (BEiT-style layer-wise lr decay, `util/lr_decay.py`): the token embedding is layer 0, encoder
  block i is layer i + 1, everything after the blocks is layer L + 1; group lr scale = decay ** (L + 1 - layer).
"""

from __future__ import annotations

import math
import re

from torch import nn


def skips_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    """The original rule: 1-D parameters and biases get no weight decay."""
    return parameter.ndim <= 1 or name.endswith(".bias")


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters that get weight decay (for `Trainer.get_decay_parameter_names`)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and not skips_weight_decay(n, p)]


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: decayed and not decayed (frozen parameters left out)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if skips_weight_decay(name, parameter) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


_BLOCK = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


def layer_id(name: str, num_layers: int) -> int:
    """Layer index of a MAGE parameter for layer-wise lr decay: 0 for the token embedding, i + 1 for encoder
    block i, `num_layers + 1` for the rest (final norms, heads)."""
    if ".embeddings." in f".{name}":
        return 0
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def param_groups_layer_decay(model: nn.Module, weight_decay: float, layer_decay: float,
                             num_layers: int) -> list[dict]:
    """Optimizer groups with `lr_scale` = layer_decay ** (num_layers + 1 - layer) and the weight-decay rule
    above. Multiply each group's lr by its `lr_scale` (see `LayerDecayLRCallback` / `scale_group_lrs`)."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"`layer_decay` must be in (0, 1], got {layer_decay}")
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer = layer_id(name, num_layers)
        no_decay = skips_weight_decay(name, parameter)
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (num_layers + 1 - layer),
        })
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def absolute_learning_rate(base_learning_rate: float, total_batch_size: int, reference_batch_size: int = 256) -> float:
    """The original's linear scaling: lr = blr * total batch / 256."""
    return base_learning_rate * total_batch_size / reference_batch_size


def warmup_cosine_lr(epoch: float, epochs: float, warmup_epochs: float, lr: float, min_lr: float = 0.0) -> float:
    """The original per-iteration schedule (`util/lr_sched.py`): linear warm-up over `warmup_epochs`, then a
    half-cycle cosine from `lr` to `min_lr` at `epochs`; `epoch` is fractional."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
