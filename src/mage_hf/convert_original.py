"""Mapping of the original MAGE checkpoints (github.com/LTH14/mage) onto mage-hf models.

Every key of an original checkpoint is either mapped or listed in `DROPPED_PREFIXES` (modules the original
builds but never uses in its forward pass); anything else is unknown and fails the conversion unless the
caller asks to ignore it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field

import torch

from .configuration_mage import MAGE_PRESETS, MageConfig

logger = logging.getLogger(__name__)

# Built by the original but unused by any forward pass: the MAE-style patch embedding and its position
# embeddings, the MAE decoder's mask token / sin-cos positions / pixel head, and a constant buffer.
DROPPED_PREFIXES = (
    "patch_embed.",
    "cls_token",
    "pos_embed",
    "mask_token",
    "decoder_pos_embed",  # the fixed sin-cos one; `decoder_pos_embed_learned` is mapped before this check
    "decoder_pred.",
    "token_emb.position_ids",
)

_TRANSFORMER_RULES: list[tuple[str, str]] = [
    (r"^token_emb\.word_embeddings\.", "mage.embeddings.word_embeddings."),
    (r"^token_emb\.position_embeddings\.", "mage.embeddings.position_embeddings."),
    (r"^token_emb\.LayerNorm\.", "mage.embeddings.layer_norm."),
    (r"^blocks\.(\d+)\.", r"mage.encoder.layers.\1."),
    (r"^norm\.", "mage.norm."),
    (r"^fc_norm\.", "mage.fc_norm."),
    (r"^decoder_embed\.", "decoder.embed."),
    (r"^decoder_pos_embed_learned$", "decoder.position_embeddings"),
    (r"^decoder_blocks\.(\d+)\.", r"decoder.blocks.layers.\1."),
    (r"^decoder_norm\.", "decoder.norm."),
    (r"^mlm_layer\.fc\.", "mlm_head.fc."),
    (r"^mlm_layer\.ln\.", "mlm_head.layer_norm."),
    (r"^mlm_layer\.bias$", "mlm_head.bias"),
    (r"^head\.", "classifier."),
    (r"^vqgan\.encoder\.", "mage.vqvae.encoder."),
    (r"^vqgan\.quantize\.embedding\.", "mage.vqvae.quantize.embedding."),
]


class ConversionError(ValueError):
    """A checkpoint that does not fit the requested model (unknown, missing or mis-shaped keys)."""


def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Open an original `.pth`/`.ckpt` safely (`weights_only=True`) and return its flat state dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ConversionError(f"{path} does not hold a state dict (expected {{'model': ...}} or {{'state_dict': ...}})")
    return checkpoint


@dataclass
class ConvertedWeights:
    """State dicts for the mage-hf modules, plus what was dropped and what was not understood."""

    transformer: dict[str, torch.Tensor] = field(default_factory=dict)
    vqvae: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def map_original_keys(state_dict: dict[str, torch.Tensor]) -> ConvertedWeights:
    """Rename the original keys. `vqgan.*` (or a bare VQGAN's `encoder.*`/`decoder.*`/`quantize.*`) also goes to
    the `MageVQModel` state dict."""
    out = ConvertedWeights()
    bare_vqgan = any(k.startswith("quantize.") for k in state_dict) and not any(k.startswith("vqgan.") for k in state_dict)
    for key, tensor in state_dict.items():
        vq_key = key if bare_vqgan else (key[len("vqgan."):] if key.startswith("vqgan.") else None)
        if vq_key is not None:
            if re.match(r"^(encoder|decoder)\.|^quantize\.embedding\.weight$", vq_key):
                out.vqvae[vq_key] = tensor
                if not vq_key.startswith("decoder."):
                    out.transformer["mage.vqvae." + vq_key] = tensor
            else:
                out.unknown.append(key)
            continue
        for pattern, replacement in _TRANSFORMER_RULES:
            if re.match(pattern, key):
                new_key = re.sub(pattern, replacement, key)
                if new_key == "mlm_head.bias":
                    tensor = tensor.reshape(-1)
                out.transformer[new_key] = tensor
                break
        else:
            if key.startswith(DROPPED_PREFIXES):
                out.dropped.append(key)
            else:
                out.unknown.append(key)
    return out


def config_from_original(original: dict, task: str = "pretraining") -> MageConfig:
    """A `MageConfig` from the original code's own hyper-parameter names (see the fixture's `config.json`).

    Keys: `embed_dim`, `depth`, `num_heads`, `decoder_embed_dim`, `decoder_depth`, `decoder_num_heads`,
    `mlp_ratio` (default 4), VQGAN `ch`, `ch_mult`, `num_res_blocks`, `z_channels`, `resolution`, `n_embed`,
    optional `img_size` (or `original_model_kwargs.img_size`) and `num_classes`.
    """
    required = ["embed_dim", "depth", "num_heads", "ch", "ch_mult", "num_res_blocks", "z_channels", "n_embed"]
    missing = [k for k in required if k not in original]
    if missing:
        raise ValueError(f"original config is missing {missing}")
    mlp_ratio = original.get("mlp_ratio", 4)
    image_size = original.get("img_size", original.get("original_model_kwargs", {}).get("img_size", original.get("resolution", 256)))
    vqvae_config = dict(
        base_channels=original["ch"], channel_multipliers=list(original["ch_mult"]),
        num_res_blocks=original["num_res_blocks"], latent_channels=original["z_channels"],
        codebook_size=original["n_embed"], sample_size=original.get("resolution", image_size),
    )
    kwargs = dict(
        hidden_size=original["embed_dim"], num_hidden_layers=original["depth"], num_attention_heads=original["num_heads"],
        intermediate_size=int(original["embed_dim"] * mlp_ratio), image_size=image_size, vqvae_config=vqvae_config,
    )
    if "decoder_embed_dim" in original:
        kwargs.update(
            decoder_hidden_size=original["decoder_embed_dim"], decoder_num_hidden_layers=original["decoder_depth"],
            decoder_num_attention_heads=original["decoder_num_heads"],
            decoder_intermediate_size=int(original["decoder_embed_dim"] * mlp_ratio),
        )
    if task == "image-classification":
        kwargs.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if "num_classes" in original:
            kwargs["num_labels"] = original["num_classes"]
    return MageConfig(**kwargs)


def config_from_preset(name: str, task: str) -> MageConfig:
    if name not in MAGE_PRESETS:
        raise ValueError(f"`--model` must be one of {sorted(MAGE_PRESETS)}, got {name!r}")
    return MageConfig.from_preset(name)


def read_original_config(path: str | os.PathLike) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"original config not found: {path}")
    with open(path) as handle:
        return json.load(handle)


def load_converted(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], allow_missing: tuple[str, ...] = ()) -> None:
    """Load `state_dict` into `model` strictly, with errors that name the offending keys and shapes.

    `allow_missing` lists key prefixes the original checkpoint legitimately lacks (left at their init).
    """
    expected = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
        for k, v in state_dict.items() if k in expected and expected[k].shape != v.shape
    ]
    if mismatched:
        raise ConversionError("the config's sizes contradict the checkpoint:\n  " + "\n  ".join(mismatched))
    unexpected = sorted(set(state_dict) - set(expected))
    missing = sorted(k for k in set(expected) - set(state_dict) if not k.startswith(allow_missing))
    if unexpected or missing:
        raise ConversionError(
            "checkpoint does not match the model:"
            + (f"\n  missing keys: {missing}" if missing else "")
            + (f"\n  keys the model does not have: {unexpected}" if unexpected else "")
        )
    model.load_state_dict(state_dict, strict=False)
