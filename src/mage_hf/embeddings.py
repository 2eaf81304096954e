"""Which embedding of `MageModel` outputs a probe or a classifier head reads.

The kinds, as (B, D) tensors of `MageModel` outputs:

- `"pooler"`: `pooler_output`, the mean image token after `fc_norm` (the original linear-probe feature);
- `"cls"`: position 0 of `last_hidden_state`, the class token after the final `norm`;
- `"tokens"`: every image token of `last_hidden_state` after the final `norm`, flattened in grid order,
  D = num_tokens * hidden_size (a linear map of it keeps the token layout that pooling discards).
"""

from __future__ import annotations

import torch

FEATURE_KINDS = ("pooler", "cls", "tokens")

# `MageConfig.classifier_pooling` -> the feature kind its head reads.
POOLING_FEATURE_KIND = {"mean": "pooler", "cls": "cls", "tokens": "tokens"}


def check_feature_kind(kind: str) -> None:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"`kind` must be one of {FEATURE_KINDS}, got {kind!r}")


def select_features(outputs, kind: str) -> torch.Tensor:
    """The (B, D) embedding `kind` of `MageModel` outputs (see the module docstring)."""
    if kind == "pooler":
        return outputs.pooler_output
    if kind == "cls":
        return outputs.last_hidden_state[:, 0]
    check_feature_kind(kind)
    return outputs.last_hidden_state[:, 1:].flatten(1)
